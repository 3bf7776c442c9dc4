//! submit: `POST /videos` registers a film and queues every chunk.

use shotlist_shared::cloud::api::Endpoint;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shotlist_shared::cloud::lambda::run_http(&[Endpoint::Submit]).await
}
