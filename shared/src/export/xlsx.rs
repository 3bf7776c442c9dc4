//! The sheet as an Excel workbook (rust_xlsxwriter).

use crate::sheet::{FilmDetails, Sheet};

use super::{ExportError, Lang};

/// The workbook's bytes.
pub(super) fn bytes(
    _sheet: &Sheet,
    _details: &FilmDetails,
    _lang: Lang,
) -> Result<Vec<u8>, ExportError> {
    Err(ExportError::Xlsx("not written yet".into()))
}
