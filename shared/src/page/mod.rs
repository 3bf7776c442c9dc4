//! The progress page: one self-contained HTML file (no script or style from
//! anywhere else) served by the status function at
//! `GET /videos/{id}/progress` and by `shotlist serve` at the same path, and
//! what both answer around it: the progress document it polls, the
//! downloads (`sheet.<ext>?lang=..`) with their file names, and the page's
//! security policy. Both servers go through the same functions here, so a
//! download, its file name and its errors are the same from either.

use serde_json::Value;
use uuid::Uuid;

use crate::db::{Db, DbError};
use crate::export::{self, ExportError, Format, Lang};
use crate::sheet::Sheet;

/// The longest part of a refused `lang` quoted back in an error.
const QUOTED_LANG_CHARS: usize = 40;

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

/// A sheet file, ready to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub bytes: Vec<u8>,
    /// [`Format::content_type`].
    pub content_type: &'static str,
    /// [`download_name`].
    pub file_name: String,
}

impl Download {
    /// The `Content-Disposition` that saves the file under its name. The
    /// name is a UUID and fixed words, so it needs no quoting rules.
    pub fn disposition(&self) -> String {
        format!("attachment; filename=\"{}\"", self.file_name)
    }
}

/// Why a film's sheet could not be downloaded.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The film has no sheet yet (409), in [`not_ready`]'s words.
    #[error("{0}")]
    NotReady(String),
    /// The database refused or failed: an unknown film is
    /// [`DbError::NotFound`] (404); the rest as each server maps it.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The stored sheet could not be rendered: a fault of this side (500).
    #[error("could not make the {format} sheet of video {video_id}: {source}")]
    Render {
        video_id: Uuid,
        format: Format,
        #[source]
        source: ExportError,
    },
}

impl DownloadError {
    /// The status and error text both servers answer with: 409 while the
    /// film has no sheet, [`db_answer`] for the database, 500 (logged here,
    /// once) when the sheet cannot be rendered.
    pub fn answer(self) -> (http::StatusCode, String) {
        match self {
            DownloadError::NotReady(why) => (http::StatusCode::CONFLICT, why),
            DownloadError::Db(error) => db_answer(error),
            DownloadError::Render {
                video_id, format, ..
            } => {
                let error = crate::error_chain(&self);
                tracing::error!(%video_id, %format, error, "cannot render the sheet");
                (http::StatusCode::INTERNAL_SERVER_ERROR, error)
            }
        }
    }
}

/// The status and error text both servers answer a database failure with:
/// 404 an unknown film, 409 a film not in the state asked for or a refused
/// argument, 503 what may pass on a retry, 500 the rest (logged here, once).
pub fn db_answer(error: DbError) -> (http::StatusCode, String) {
    use http::StatusCode;
    let status = match &error {
        DbError::NotFound(_) => StatusCode::NOT_FOUND,
        DbError::NotReady(_) | DbError::InvalidArgument(_) => StatusCode::CONFLICT,
        error if error.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(%error, "database call failed");
    }
    (status, error.to_string())
}

/// The film's stored sheet in `format` and `lang`, with its stored details,
/// passed through `show` first (the API strips its source root there).
pub async fn download(
    db: &Db,
    video_id: Uuid,
    format: Format,
    lang: Lang,
    show: impl FnOnce(Sheet) -> Sheet,
) -> Result<Download, DownloadError> {
    // Details first: an unknown film is NotFound before anything else.
    let details = db.video_details(video_id).await?;
    let Some(sheet) = db.get_sheet(video_id).await? else {
        return Err(DownloadError::NotReady(not_ready(db, video_id).await?));
    };
    let bytes = export::render(&show(sheet), &details, format, lang).map_err(|source| {
        DownloadError::Render {
            video_id,
            format,
            source,
        }
    })?;
    Ok(Download {
        bytes,
        content_type: format.content_type(),
        file_name: download_name(video_id, format, lang),
    })
}

/// The `lang` of a download's query string, decoded as a browser encodes it
/// (`lang=%72%75` is `ru`); English when there is none, the first when
/// there are several, other parameters ignored. An unknown or empty one is
/// refused with the words both servers answer 400 with.
pub fn query_lang(query: Option<&str>) -> Result<Lang, String> {
    let given = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "lang")
        .map(|(_, value)| value);
    let Some(code) = given else {
        return Ok(Lang::default());
    };
    code.parse().map_err(|_| {
        let quoted: String = code.chars().take(QUOTED_LANG_CHARS).collect();
        format!("unknown lang {quoted:?}; expected en or ru")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lang_of_a_query_is_decoded_and_english_without_one() {
        for (query, expected) in [
            (None, Lang::En),
            (Some(""), Lang::En),
            (Some("x=1"), Lang::En),
            (Some("x=1&lang=ru"), Lang::Ru),
            (Some("lang=%72%75"), Lang::Ru),
            (Some("lang=RU"), Lang::Ru),
            (Some("lang=en&lang=ru"), Lang::En),
            (Some("la%6Eg=ru"), Lang::Ru),
        ] {
            assert_eq!(query_lang(query), Ok(expected), "{query:?}");
        }
    }

    #[test]
    fn an_unknown_or_empty_lang_is_refused_naming_what_was_given() {
        for (query, quoted) in [
            ("lang=de", "\"de\""),
            ("lang=", "\"\""),
            ("lang", "\"\""),
            ("lang=%64%65", "\"de\""),
            ("lang=r+u", "\"r u\""),
        ] {
            let refused = query_lang(Some(query)).expect_err(query);
            assert_eq!(
                refused,
                format!("unknown lang {quoted}; expected en or ru"),
                "{query}"
            );
        }
        let long = format!("lang={}", "x".repeat(500));
        let refused = query_lang(Some(&long)).expect_err("a long lang");
        assert!(refused.len() < 100, "quoted in part: {refused}");
    }

    #[test]
    fn a_download_is_named_for_its_film_language_and_format() {
        let id = Uuid::nil();
        assert_eq!(
            download_name(id, Format::Docx, Lang::Ru),
            format!("shotlist-{id}.ru.docx")
        );
        assert_eq!(
            download_name(id, Format::Json, Lang::Ru),
            format!("shotlist-{id}.json")
        );
        let file = Download {
            bytes: vec![],
            content_type: Format::Csv.content_type(),
            file_name: download_name(id, Format::Csv, Lang::En),
        };
        assert_eq!(
            file.disposition(),
            format!("attachment; filename=\"shotlist-{id}.en.csv\"")
        );
    }
}
