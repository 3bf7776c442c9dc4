//! The cloud shape: the handlers behind the Lambda functions, the queues
//! between them, and a local stand-in for Lambda's SQS event source mapping.
//!
//! The handlers are plain async functions over [`crate::db::Db`], a
//! [`queue::MessageQueue`] and an [`crate::analyzer::Analyzer`]; the binaries
//! in `functions/` only read their configuration and hand events to them, and
//! the local runner (`shotlist cloud`) calls the very same functions.

pub mod messages;
pub mod queue;
