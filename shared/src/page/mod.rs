//! The progress page: one self-contained HTML file (no script or style from
//! anywhere else) served by the status function at
//! `GET /videos/{id}/progress` and by `shotlist serve` at the same path.

/// The page. It reads the film's id from its own address and polls the
/// progress document one level up (`GET /videos/{id}`).
pub const PROGRESS_PAGE: &str = include_str!("progress.html");
