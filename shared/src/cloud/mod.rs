//! The cloud shape: the handlers behind the Lambda functions, the queues
//! between them, and a local stand-in for Lambda's SQS event source mapping.
//!
//! The handlers are plain async functions over [`crate::db::Db`], a
//! [`queue::MessageQueue`] and an [`crate::analyzer::Analyzer`]; the binaries
//! in `functions/` only call [`lambda`], which reads the configuration and
//! hands events to them, and the local runner (`shotlist cloud`) calls the
//! very same handlers.

pub mod api;
pub mod auth;
pub mod chunk;
pub mod config;
pub mod finalize;
pub mod lambda;
pub mod local;
pub mod messages;
pub mod poller;
pub mod queue;
