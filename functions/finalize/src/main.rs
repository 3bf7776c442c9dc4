//! finalize: builds a finished film's sheet, for finalize-queue messages and
//! for `POST /videos/{id}/finalize`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shotlist_shared::cloud::lambda::run_finalize().await
}
