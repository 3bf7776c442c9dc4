//! The progress page: one self-contained HTML file (no script or style from
//! anywhere else) served by the status function at
//! `GET /videos/{id}/progress` and by `shotlist serve` at the same path, and
//! what both answer around it: the progress document it polls, the
//! downloads' file names, and the page's security policy.

use serde_json::Value;
use uuid::Uuid;

use crate::db::{Db, DbError};
use crate::export::{Format, Lang};
use crate::sheet::Sheet;

/// The page. It reads the film's id from its own address and polls the
/// progress document one level up (`GET /videos/{id}`).
pub const PROGRESS_PAGE: &str = include_str!("progress.html");

/// The page's Content-Security-Policy: its own inline script and style,
/// `data:` images, requests to the server it came from only, and nothing
/// loaded from anywhere else; no `<base>` and no framing by other sites.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
     frame-ancestors 'none'";

/// The progress document of a film: `chunk_progress` with `"sheet"`, null
/// until the film has one, passed through `show` (the API strips its
/// source root there).
pub async fn progress_document(
    db: &Db,
    video_id: Uuid,
    show: impl FnOnce(Sheet) -> Sheet,
) -> Result<Value, DbError> {
    let mut document = db.chunk_progress(video_id).await?;
    let sheet = db.get_sheet(video_id).await?.map(show);
    if let Value::Object(fields) = &mut document {
        // A sheet is plain data: serializing it cannot fail.
        let sheet = serde_json::to_value(sheet).unwrap_or(Value::Null);
        fields.insert("sheet".into(), sheet);
    }
    Ok(document)
}

/// Why a film has no sheet to download yet, as a 409 says it:
/// `video X has no sheet yet: 3 of 18 chunks done`.
pub async fn not_ready(db: &Db, video_id: Uuid) -> Result<String, DbError> {
    let progress = db.chunk_progress(video_id).await?;
    let count = |key: &str| progress[key].as_u64().unwrap_or(0);
    Ok(format!(
        "video {video_id} has no sheet yet: {} of {} chunks done",
        count("completedChunks") + count("failedChunks"),
        count("totalChunks")
    ))
}

/// The file name a download is saved under: `shotlist-<id>.<lang>.<ext>`,
/// or `shotlist-<id>.json` (the JSON sheet is the same in every language).
pub fn download_name(video_id: Uuid, format: Format, lang: Lang) -> String {
    match format {
        Format::Json => format!("shotlist-{video_id}.{format}"),
        _ => format!("shotlist-{video_id}.{}.{format}", lang.code()),
    }
}
