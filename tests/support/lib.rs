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
/// A fake Lambda Runtime API that runs a function binary as Lambda does.
pub mod runtime_api;
pub mod scripted_model;
pub mod sheets;
/// A private PostgreSQL on 127.0.0.1 that accepts only TLS connections.
pub mod tls_pg;

/// The names of the six Lambda functions' binaries in `functions/`, which
/// `template.yaml` deploys.
pub const FUNCTIONS: [&str; 6] = [
    "process-chunk",
    "finalize",
    "force-finalize",
    "submit",
    "status",
    "sweeper",
];
