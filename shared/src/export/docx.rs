//! The sheet as a Word document (docx-rs).

use crate::sheet::{FilmDetails, Sheet};

use super::{ExportError, Lang};

/// The document's bytes.
pub(super) fn bytes(
    _sheet: &Sheet,
    _details: &FilmDetails,
    _lang: Lang,
) -> Result<Vec<u8>, ExportError> {
    Err(ExportError::Docx("not written yet".into()))
}
