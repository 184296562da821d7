//! Aligned text tables for the CLI (`--output table`).

use std::io::Write;

/// Rows under headers; each column as wide as its widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn write(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
            let padded: Vec<String> = cells
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        writeln!(out, "{}", line(&mut self.headers.iter().copied()))?;
        for row in &self.rows {
            writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
        }
        Ok(())
    }
}

/// A progress bar line: `[#####.....] 5/10 moved, 0 failed`.
pub fn progress_bar(done: u64, failed: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done + failed)
        .saturating_mul(WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "[{}{}] {done}/{total} moved, {failed} failed",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut table = Table::new(&["ID", "ADDRESS", "STATE"]);
        table.row(vec!["1".into(), "10.0.0.1:4001".into(), "alive".into()]);
        table.row(vec!["12".into(), "n2:4001".into(), "dead".into()]);
        let mut out = Vec::new();
        table.write(&mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "ID  ADDRESS        STATE\n1   10.0.0.1:4001  alive\n12  n2:4001        dead\n"
        );
    }

    #[test]
    fn the_bar_fills_with_moved_and_failed() {
        assert_eq!(
            progress_bar(5, 0, 10),
            "[###############...............] 5/10 moved, 0 failed"
        );
        assert_eq!(
            progress_bar(0, 0, 0),
            format!("[{}] 0/0 moved, 0 failed", "#".repeat(30))
        );
    }
}
