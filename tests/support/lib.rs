//! Test support for the workspace's integration tests: generated films with
//! known cut lists ([`film`]) and a private Postgres ([`pg`]).

pub mod cli_bin;
pub mod cloud;
pub mod exact;
pub mod fake_gemini;
pub mod fake_replicate;
pub mod fake_server;
pub mod film;
pub mod fixtures;
pub mod gate;
pub mod gated_analyzer;
pub mod logs;
pub mod pg;
pub mod pg_restart;
pub mod roles;
pub mod scripted_model;
pub mod sheets;
