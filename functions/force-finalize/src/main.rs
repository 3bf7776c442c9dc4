//! force-finalize: `POST /videos/{id}/force-finalize` ends a stuck film with
//! what exists, or (`{"retry": true}`) queues its unfinished chunks again.

use shotlist_shared::cloud::api::Endpoint;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shotlist_shared::cloud::lambda::run_http(&[Endpoint::ForceFinalize]).await
}
