//! sweeper: on a schedule, puts the chunks of lost workers back on the chunk
//! queue, fails those that used up their attempts, and asks for the sheets of
//! finished films that have none.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shotlist_shared::cloud::lambda::run_sweeper().await
}
