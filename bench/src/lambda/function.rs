//! A function binary run as Lambda runs it: Lambda's environment, the
//! functions' configuration, a Runtime API of the bench's own, and nothing
//! reachable beyond loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use shotlist_tests::runtime_api::RuntimeApi;
use tokio::process::{Child, Command};

/// The functions' JWT secret (at least 32 bytes; no request is signed).
const JWT_SECRET: &str = "shotlist-bench-jwt-secret-2f9c41d07be8a365";

/// The queues, at the discard port of loopback, where nothing listens: the
/// measured invocations send nothing, and if one did it would fail here
/// rather than reach anything real.
const SQS_ENDPOINT: &str = "http://127.0.0.1:9";
const CHUNK_QUEUE_URL: &str = "http://127.0.0.1:9/000000000000/shotlist-chunks";
const FINALIZE_QUEUE_URL: &str = "http://127.0.0.1:9/000000000000/shotlist-finalize";

/// What every function instance is given besides Lambda's own variables.
pub(super) struct Environment {
    pub(super) database_url: String,
    /// An empty HOME, so that the AWS SDK finds no profile files.
    pub(super) home: PathBuf,
    /// Where the functions' output goes.
    pub(super) logs: PathBuf,
}

/// A running function binary. Dropping it kills the process.
pub(super) struct Function {
    pub(super) child: Child,
    log: PathBuf,
}

impl Function {
    /// Starts binary `path` with Lambda's environment, the functions'
    /// configuration and `extra`, and nothing else of this process's
    /// environment but `PATH` (process-chunk runs ffmpeg).
    pub(super) fn spawn(
        name: &str,
        path: &Path,
        api: &RuntimeApi,
        env: &Environment,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Function> {
        let log = env.logs.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("sharing the log file")?;
        let mut command = Command::new(path);
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &env.home)
            .envs(api.lambda_env(name))
            .env("AWS_ENDPOINT_URL_SQS", SQS_ENDPOINT)
            .env("RUST_LOG", "info")
            .env("DATABASE_URL", &env.database_url)
            .env("SUPABASE_JWT_SECRET", JWT_SECRET)
            .env("CHUNK_QUEUE_URL", CHUNK_QUEUE_URL)
            .env("FINALIZE_QUEUE_URL", FINALIZE_QUEUE_URL)
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(Function { child, log })
    }

    /// The last lines the function wrote, for an error message.
    pub(super) fn output_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("--- the function's last output ---\n{tail}")
    }

    /// Kills the process and waits for it.
    pub(super) async fn stop(mut self) {
        // It may have exited already; either way it is gone afterwards.
        let _ = self.child.kill().await;
    }
}
