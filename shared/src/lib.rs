//! The core of shotlist, shared by the command-line runner and the Lambda
//! functions.
//!
//! A film is cut into overlapping chunks ([`plan`]); each chunk is claimed,
//! analyzed ([`analyzer`]) and committed ([`worker`]) through SQL functions in
//! Postgres ([`db`]), the only coordination point; when the last chunk is
//! terminal, the chunks' shots are merged ([`merge`]) into one sheet
//! ([`sheet`]). Time is a frame index throughout ([`time`]).

pub mod analyzer;
pub mod cloud;
pub mod db;
pub mod export;
pub mod localdb;
pub mod merge;
pub mod model;
pub mod plan;
pub mod probe;
pub mod runner;
pub mod sheet;
pub mod time;
pub mod worker;
