//! The functions' configuration, read from the environment once per
//! Lambda instance. Errors name the variable, never its value.
//!
//! | variable               | used by                          | meaning |
//! |------------------------|----------------------------------|---------|
//! | `DATABASE_URL`         | all                              | PostgreSQL URL (Supabase: the pooler, `sslmode=require`) |
//! | `DATABASE_CA_CERT`     | all (optional)                   | PEM file of an extra trusted root for the database |
//! | `SUPABASE_JWT_SECRET`  | submit, status, finalize, force-finalize | the project's JWT secret (HS256) |
//! | `CHUNK_QUEUE_URL`      | submit, force-finalize, process-chunk | the chunk queue (process-chunk: to set retry delays) |
//! | `FINALIZE_QUEUE_URL`   | process-chunk                    | the finalize queue |
//! | `CHUNK_MAX_RECEIVES`   | process-chunk (default 5)        | the chunk queue's `maxReceiveCount` |
//! | `SHOTLIST_ANALYZER`    | process-chunk (default `local`)  | which analyzer runs |
//! | `SHOTLIST_SOURCE_ROOT` | submit (optional)                | folder or URL prefix that bucket keys are under |

use std::sync::Arc;

use crate::analyzer::local::LocalAnalyzer;
use crate::analyzer::Analyzer;
use crate::cloud::api::{Api, SourceRoot};
use crate::cloud::auth::Verifier;
use crate::cloud::chunk::{ChunkHandler, Redelivery, SqsRedelivery};
use crate::cloud::finalize::FinalizeHandler;
use crate::cloud::queue::{sqs_client, MessageQueue, SqsQueue};
use crate::db::Db;
use crate::plan::PlanParams;
use crate::probe::ProbeOptions;
use crate::worker::WorkerConfig;

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

/// The SQS queue whose URL is in the variable `name`.
pub async fn queue(name: &str) -> Result<(Arc<dyn MessageQueue>, String), ConfigError> {
    let url = required(name)?;
    let client = sqs_client(None).await;
    let queue_name = queue_name(&url);
    Ok((Arc::new(SqsQueue::new(url, client)), queue_name))
}

/// The analyzer named by `SHOTLIST_ANALYZER` (default `local`).
pub fn analyzer() -> Result<Arc<dyn Analyzer>, ConfigError> {
    match optional("SHOTLIST_ANALYZER").as_deref().unwrap_or("local") {
        "local" => Ok(Arc::new(LocalAnalyzer::default())),
        other => Err(ConfigError(format!(
            "SHOTLIST_ANALYZER {other:?} is not available in this build; it has: local"
        ))),
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
    let analyzer = analyzer()?;
    let max_receives = max_receives()?;
    let db = database().await?;
    let (finalize_queue, _) = queue("FINALIZE_QUEUE_URL").await?;
    let chunk_queue_url = optional("CHUNK_QUEUE_URL");
    let queue_name = chunk_queue_url
        .as_deref()
        .map(queue_name)
        .unwrap_or_else(|| "chunks".into());
    // Without the queue's URL, retries wait out its visibility timeout.
    let redelivery = match chunk_queue_url {
        Some(queue_url) => Some(Arc::new(SqsRedelivery {
            client: sqs_client(None).await,
            queue_url,
        }) as Arc<dyn Redelivery>),
        None => None,
    };
    Ok(ChunkHandler {
        db,
        analyzer,
        finalize_queue,
        worker: WorkerConfig::default(),
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
