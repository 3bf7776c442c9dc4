//! status: `GET /videos/{id}` answers the film's progress, and its sheet
//! once it is finalized; `GET /videos/{id}/sheet.{ext}` the sheet as a file,
//! and `GET /videos/{id}/progress` the progress page.

use shotlist_shared::cloud::api::Endpoint;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shotlist_shared::cloud::lambda::run_http(&[Endpoint::Status]).await
}
