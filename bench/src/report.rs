//! Tables and the statistics they show.

use comfy_table::presets::ASCII_MARKDOWN;
use comfy_table::{CellAlignment, Table as Grid};

/// One question's results: a title, the rows, and a note under the table
/// saying how they were measured.
#[derive(Debug, Clone)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "a row of {}", self.title);
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The table as Markdown (it reads the same in a terminal), numbers
    /// right-aligned, the notes below it.
    pub fn render(&self) -> String {
        let mut grid = Grid::new();
        grid.load_style(ASCII_MARKDOWN);
        grid.set_header(&self.header);
        for row in &self.rows {
            grid.add_row(row);
        }
        for (i, column) in grid.column_iter_mut().enumerate() {
            let numeric = self
                .rows
                .iter()
                .all(|row| row.get(i).is_some_and(|cell| looks_numeric(cell)));
            if numeric && !self.rows.is_empty() {
                column.set_cell_alignment(CellAlignment::Right);
            }
        }
        let mut out = format!("### {}\n\n{grid}\n", self.title);
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        out
    }
}

fn looks_numeric(cell: &str) -> bool {
    cell.chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '≤')
}

/// The median of `values` (the mean of the middle two for an even count);
/// NaN for none.
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`th percentile of `values` by linear interpolation between the
/// closest ranks; NaN for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0).clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

/// A ratio to two decimals, `x` appended: `1.23x`.
pub fn ratio(numerator: f64, denominator: f64) -> String {
    if denominator == 0.0 || numerator.is_nan() || denominator.is_nan() {
        return "n/a".to_string();
    }
    format!("{:.2}x", numerator / denominator)
}

/// Seconds with three significant decimals.
pub fn seconds(value: f64) -> String {
    format!("{value:.3} s")
}

/// Milliseconds with one decimal.
pub fn millis(value_seconds: f64) -> String {
    format!("{:.1} ms", value_seconds * 1000.0)
}

/// A count per second, whole.
pub fn per_second(value: f64) -> String {
    format!("{value:.0}/s")
}

/// Whether a target is met: "yes" or "no", for the targets column.
pub fn met(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 100.0), 5.0);
        assert!((percentile(&[0.0, 10.0], 99.0) - 9.9).abs() < 1e-9);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_say_when_there_is_nothing_to_divide_by() {
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }

    #[test]
    fn numbers_are_right_aligned() {
        let mut table = Table::new("T", &["name", "rate"]);
        table.row(vec!["a".into(), "12/s".into()]);
        table.row(vec!["bb".into(), "3/s".into()]);
        let text = table.render();
        assert!(text.contains("| a    | 12/s |"), "{text}");
        assert!(text.contains("| bb   |  3/s |"), "{text}");
    }
}
