//! The functions' configuration, read from the environment once per
//! Lambda instance. Errors name the variable, never its value.
//!
//! | variable               | used by                          | meaning |
//! |------------------------|----------------------------------|---------|
//! | `DATABASE_URL`         | all                              | PostgreSQL URL (Supabase: the pooler, `sslmode=require`) |
//! | `DATABASE_CA_CERT`     | all (optional)                   | PEM file of an extra trusted root for the database |
//! | `SUPABASE_JWT_SECRET`  | submit, status, finalize, force-finalize | the project's JWT secret (HS256) |
//! | `CHUNK_QUEUE_URL`      | submit, force-finalize, process-chunk, sweeper | the chunk queue (process-chunk: to set retry delays) |
//! | `FINALIZE_QUEUE_URL`   | process-chunk, sweeper           | the finalize queue |
//! | `CHUNK_MAX_RECEIVES`   | process-chunk (default 5)        | the chunk queue's `maxReceiveCount` |
//! | `SHOTLIST_ANALYZER`    | process-chunk (default `local`)  | which analyzer runs: `local`, `gemini` or `replicate` |
//! | `SHOTLIST_CHUNK_TIMEOUT` | process-chunk (default 300)    | seconds one chunk's analysis may take, retries included |
//! | `SHOTLIST_LEASE_SECONDS` | process-chunk (default 60)     | seconds a dead worker's chunk waits before another may take it |
//! | `GEMINI_API_KEYS`      | process-chunk, for `gemini`      | API keys, comma-separated |
//! | `GEMINI_BASE_URL`, `GEMINI_MODEL` | process-chunk (optional) | the Gemini endpoint and model |
//! | `REPLICATE_API_TOKENS` | process-chunk, for `replicate`   | API tokens, comma-separated |
//! | `REPLICATE_BASE_URL`, `REPLICATE_MODEL` | process-chunk (optional) | the Replicate endpoint and model (owner/name) |
//! | `SHOTLIST_SOURCE_ROOT` | submit (optional)                | folder or URL prefix that bucket keys are under |

use std::sync::Arc;

use std::time::Duration;

use crate::analyzer::setup::{self, AnalyzerKind, AnalyzerSetup};
use crate::analyzer::Analyzer;
use crate::cloud::api::{Api, SourceRoot};
use crate::cloud::auth::Verifier;
use crate::cloud::chunk::{ChunkHandler, Redelivery, SqsRedelivery};
use crate::cloud::finalize::FinalizeHandler;
use crate::cloud::queue::{sqs_client, MessageQueue, SqsQueue};
use crate::db::Db;
use crate::plan::PlanParams;
use crate::probe::ProbeOptions;
use crate::worker::{self, WorkerConfig};

/// Connections one function instance keeps: it handles one event at a time.
pub const POOL_SIZE: usize = 2;

/// A missing or unusable setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Reads a required variable.
pub fn required(name: &str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Ok(_) => Err(ConfigError(format!("{name} is set but empty"))),
        Err(std::env::VarError::NotPresent) => Err(ConfigError(format!("{name} is not set"))),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ConfigError(format!("{name} is not valid UTF-8")))
        }
    }
}

fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The queue's name: the last segment of its URL.
pub fn queue_name(url: &str) -> String {
    url.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(url)
        .to_string()
}

/// Connects to `DATABASE_URL`.
pub async fn database() -> Result<Db, ConfigError> {
    let url = required("DATABASE_URL")?;
    Db::connect(&url, POOL_SIZE)
        .await
        .map_err(|e| ConfigError(format!("DATABASE_URL: {e}")))
}

/// The SQS queue whose URL is in the variable `name`, through a client of
/// its own. A function that reaches two queues builds one client and uses
/// [`queue_with`] instead.
pub async fn queue(name: &str) -> Result<(Arc<dyn MessageQueue>, String), ConfigError> {
    let url = required(name)?;
    Ok(queue_with(&sqs_client(None).await, url))
}

/// The SQS queue at `url` and its name, reached through `client`. Building a
/// client loads aws-config and the HTTPS client's trust store, so
/// process-chunk and sweeper, which reach two queues, build one per instance
/// and pass it here; clones share its connections.
pub fn queue_with(client: &aws_sdk_sqs::Client, url: String) -> (Arc<dyn MessageQueue>, String) {
    let queue_name = queue_name(&url);
    (Arc::new(SqsQueue::new(url, client.clone())), queue_name)
}

/// The analyzer `SHOTLIST_ANALYZER` names (default `local`) and
/// `SHOTLIST_CHUNK_TIMEOUT`, checked against the variables the analyzer
/// needs (its keys), without connecting anywhere.
pub fn analyzer_setup() -> Result<AnalyzerSetup, ConfigError> {
    let kind: AnalyzerKind = match optional("SHOTLIST_ANALYZER") {
        None => AnalyzerKind::Local,
        Some(name) => name
            .parse()
            .map_err(|e| ConfigError(format!("SHOTLIST_ANALYZER: {e}")))?,
    };
    let mut analyzer = AnalyzerSetup {
        kind,
        ..AnalyzerSetup::default()
    };
    analyzer.model.chunk_timeout = chunk_timeout()?;
    let budget = setup::check(&analyzer, &env_var).map_err(ConfigError)?;
    if let Some(budget) = budget {
        tracing::info!(
            analyzer = %kind,
            chunk_input_tokens = budget.chunk_input_tokens,
            chunk_tokens = budget.chunk_tokens,
            "analyzer configured"
        );
    }
    Ok(analyzer)
}

/// The analyzer `analyzer` describes, with the keys and endpoints its
/// variables give; `db` keeps Gemini's uploads.
pub fn analyzer(analyzer: &AnalyzerSetup, db: &Db) -> Result<Arc<dyn Analyzer>, ConfigError> {
    let built = setup::build(analyzer, &env_var, db).map_err(ConfigError)?;
    Ok(built.analyzer)
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// `SHOTLIST_CHUNK_TIMEOUT`, default 300 s.
pub fn chunk_timeout() -> Result<Duration, ConfigError> {
    match optional("SHOTLIST_CHUNK_TIMEOUT") {
        None => Ok(WorkerConfig::default().chunk_timeout),
        Some(v) => setup::parse_chunk_timeout("SHOTLIST_CHUNK_TIMEOUT", &v).map_err(ConfigError),
    }
}

/// `SHOTLIST_LEASE_SECONDS`, default 60 s: how long the chunk of a worker
/// that died waits before another worker may take it.
pub fn lease() -> Result<Duration, ConfigError> {
    match optional("SHOTLIST_LEASE_SECONDS") {
        None => Ok(WorkerConfig::default().lease),
        Some(v) => worker::parse_lease("SHOTLIST_LEASE_SECONDS", &v).map_err(ConfigError),
    }
}

/// `CHUNK_MAX_RECEIVES`, default 5.
pub fn max_receives() -> Result<u32, ConfigError> {
    match optional("CHUNK_MAX_RECEIVES") {
        None => Ok(5),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                ConfigError(format!(
                    "CHUNK_MAX_RECEIVES must be a whole number of at least 1, got {v:?}"
                ))
            }),
    }
}

/// The process-chunk function's handler.
pub async fn chunk_handler() -> Result<ChunkHandler, ConfigError> {
    let max_receives = max_receives()?;
    let lease = lease()?;
    let setup = analyzer_setup()?;
    let chunk_timeout = setup.model.chunk_timeout;
    let db = database().await?;
    let analyzer = analyzer(&setup, &db)?;
    let finalize_queue_url = required("FINALIZE_QUEUE_URL")?;
    let chunk_queue_url = optional("CHUNK_QUEUE_URL");
    // One client for both queues (see `queue_with`), built once every
    // variable has been checked.
    let sqs = sqs_client(None).await;
    let (finalize_queue, _) = queue_with(&sqs, finalize_queue_url);
    let queue_name = chunk_queue_url
        .as_deref()
        .map(queue_name)
        .unwrap_or_else(|| "chunks".into());
    // Without the queue's URL, retries wait out its visibility timeout.
    let redelivery = chunk_queue_url.map(|queue_url| {
        Arc::new(SqsRedelivery {
            client: sqs,
            queue_url,
        }) as Arc<dyn Redelivery>
    });
    Ok(ChunkHandler {
        db,
        analyzer,
        finalize_queue,
        worker: WorkerConfig {
            chunk_timeout,
            lease,
            ..WorkerConfig::default()
        },
        max_receives,
        queue_name,
        redelivery,
    })
}

/// The finalize function's queue handler.
pub async fn finalize_handler(db: Db) -> FinalizeHandler {
    let queue_name = optional("FINALIZE_QUEUE_URL")
        .map(|u| queue_name(&u))
        .unwrap_or_else(|| "finalize".into());
    FinalizeHandler { db, queue_name }
}

/// The sweeper function's queues: chunk messages go to `CHUNK_QUEUE_URL`,
/// finalize messages to `FINALIZE_QUEUE_URL`.
pub async fn sweeper(db: Db) -> Result<crate::sweep::SendToQueues, ConfigError> {
    let chunks_url = required("CHUNK_QUEUE_URL")?;
    let finalize_url = required("FINALIZE_QUEUE_URL")?;
    // One client for both queues (see `queue_with`).
    let sqs = sqs_client(None).await;
    let (chunks, _) = queue_with(&sqs, chunks_url);
    let (finalize, _) = queue_with(&sqs, finalize_url);
    Ok(crate::sweep::SendToQueues {
        db,
        chunks,
        finalize,
    })
}

/// The HTTP API's shared state.
pub async fn api(db: Db) -> Result<Api, ConfigError> {
    let verifier = Verifier::new(&required("SUPABASE_JWT_SECRET")?)
        .map_err(|e| ConfigError(format!("SUPABASE_JWT_SECRET: {e}")))?;
    // Status and finalize never enqueue: a missing CHUNK_QUEUE_URL only
    // matters to submit and force-finalize, which check for it.
    let chunk_queue: Arc<dyn MessageQueue> = match optional("CHUNK_QUEUE_URL") {
        Some(_) => queue("CHUNK_QUEUE_URL").await?.0,
        None => Arc::new(NoQueue),
    };
    Ok(Api {
        db,
        verifier,
        chunk_queue,
        source_root: optional("SHOTLIST_SOURCE_ROOT").and_then(|r| SourceRoot::parse(&r)),
        plan: PlanParams::default(),
        probe: ProbeOptions::default(),
        allow_private_sources: optional("SHOTLIST_ALLOW_PRIVATE_SOURCES")
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes")),
    })
}

/// Stands in for the chunk queue where none is configured: every send
/// fails, naming the missing variable.
struct NoQueue;

#[async_trait::async_trait]
impl MessageQueue for NoQueue {
    async fn send_all(&self, bodies: &[String]) -> Result<(), crate::cloud::queue::QueueError> {
        Err(crate::cloud::queue::QueueError::Other {
            queue: "chunk queue".into(),
            detail: format!(
                "CHUNK_QUEUE_URL is not set, so {} messages cannot be sent",
                bodies.len()
            ),
        })
    }

    fn name(&self) -> &str {
        "(CHUNK_QUEUE_URL not set)"
    }
}

/// Sets up logging for a function: JSON lines, level from `RUST_LOG`
/// (default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .without_time()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_come_from_urls() {
        assert_eq!(
            queue_name("https://sqs.eu-west-1.amazonaws.com/123456789012/shotlist-chunks"),
            "shotlist-chunks"
        );
        assert_eq!(queue_name("http://127.0.0.1:5000/000000000000/q/"), "q");
    }
}
