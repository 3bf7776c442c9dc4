//! The Lambda entry points: each function's `main` calls one of these, which
//! reads the configuration once and serves invocations through the Lambda
//! Runtime API until the instance is shut down.

use std::convert::Infallible;
use std::time::SystemTime;

use aws_lambda_events::event::apigw::ApiGatewayV2httpResponse;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_http::{Body, Response};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

use crate::cloud::api::Endpoint;
use crate::cloud::config;
use crate::sweep::{self, SweepOptions};

/// process-chunk: SQS batches of chunk messages, partial batch responses.
pub async fn run_process_chunk() -> Result<(), Error> {
    config::init_logging();
    let handler = started(config::chunk_handler().await)?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let handler = handler.clone();
        async move {
            let deadline = deadline(&event.context);
            Ok::<SqsBatchResponse, Infallible>(handler.handle(event.payload, deadline).await)
        }
    }))
    .await
}

/// An HTTP function serving `endpoints`.
pub async fn run_http(endpoints: &'static [Endpoint]) -> Result<(), Error> {
    config::init_logging();
    let db = started(config::database().await)?;
    let api = started(config::api(db).await)?;
    lambda_http::run(service_fn(|request: lambda_http::Request| {
        let api = api.clone();
        async move { Ok::<Response<Body>, Infallible>(api.handle(endpoints, request).await) }
    }))
    .await
}

/// finalize: finalize-queue batches and `POST /videos/{id}/finalize`, told
/// apart by the event's shape.
pub async fn run_finalize() -> Result<(), Error> {
    config::init_logging();
    let db = started(config::database().await)?;
    let queue = config::finalize_handler(db.clone()).await;
    let api = started(config::api(db).await)?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
        let (queue, api) = (queue.clone(), api.clone());
        async move {
            let payload = event.payload;
            if payload.get("Records").is_some() {
                let batch: SqsEvent = serde_json::from_value(payload)?;
                return Ok::<Value, Error>(serde_json::to_value(queue.handle(batch).await)?);
            }
            let request = lambda_http::request::from_str(&payload.to_string())?;
            let response = api.handle(&[Endpoint::Finalize], request).await;
            Ok(serde_json::to_value(http_v2_response(response))?)
        }
    }))
    .await
}

/// sweeper: one sweep per scheduled event (EventBridge, every five
/// minutes), answering what it did. The event's content is not used.
pub async fn run_sweeper() -> Result<(), Error> {
    config::init_logging();
    let db = started(config::database().await)?;
    let queues = started(config::sweeper(db).await)?;
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| {
        let queues = queues.clone();
        async move {
            let report = sweep::sweep(&queues.db, &queues, SweepOptions::default())
                .await
                .inspect_err(|e| tracing::error!(error = %e, "the sweep failed"))?;
            Ok::<Value, Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}

/// An HTTP response in API Gateway HTTP API (payload 2.0) form.
pub fn http_v2_response(response: Response<Body>) -> ApiGatewayV2httpResponse {
    let (parts, body) = response.into_parts();
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    out.headers = parts.headers;
    out.is_base64_encoded = matches!(body, Body::Binary(_));
    out.body = match body {
        Body::Empty => None,
        other => Some(other),
    };
    out
}

/// Logs a configuration error as a log line before the instance exits, so
/// that it shows in the function's logs in the same JSON form as the rest.
fn started<T>(result: Result<T, config::ConfigError>) -> Result<T, config::ConfigError> {
    if let Err(e) = &result {
        tracing::error!(error = %e, "the function cannot start");
    }
    result
}

/// The invocation's deadline, when the runtime gave one.
fn deadline(context: &lambda_runtime::Context) -> Option<SystemTime> {
    (context.deadline > 0).then(|| context.deadline())
}
