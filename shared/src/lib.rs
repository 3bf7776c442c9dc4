//! The core of shotlist, shared by the command-line runner and the Lambda
//! functions.
//!
//! A film is cut into overlapping chunks ([`plan`]); each chunk is claimed,
//! analyzed ([`analyzer`]) and committed ([`worker`]) through SQL functions in
//! Postgres ([`db`]), the only coordination point; when the last chunk is
//! terminal, the chunks' shots are merged ([`merge`]) into one sheet
//! ([`sheet`]). Time is a frame index throughout ([`time`]). A sweeper
//! ([`sweep`]) puts back in motion the chunks whose worker was lost.

pub mod analyzer;
pub mod cloud;
pub mod db;
pub mod export;
pub mod localdb;
pub mod merge;
pub mod model;
pub mod page;
pub mod plan;
pub mod probe;
pub mod runner;
pub mod sheet;
pub mod sweep;
pub mod time;
pub mod uploads;
pub mod worker;

/// An error and its causes on one line, `outer: inner: ...`, leaving out a
/// cause whose text the line already holds (many errors repeat their
/// source's message).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}
