//! process-chunk: analyzes one chunk per SQS message (claim, analyze,
//! commit) and answers with the messages to retry.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shotlist_shared::cloud::lambda::run_process_chunk().await
}
