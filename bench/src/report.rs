//! The benchmark report: sections of markdown tables, rendered once at the end so a failed
//! section still leaves the others' numbers in the file.

use std::fmt::Write as _;

/// One titled part of the report: a table plus free-text notes (ratios, what was measured how).
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub table: Table,
    pub notes: Vec<String>,
}

/// A markdown table; every row has as many cells as there are columns.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[&str]) -> Self {
        Self {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "row width");
        self.rows.push(cells);
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.columns));
        out.push_str(&line(&vec!["---".to_owned(); self.columns.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

impl Section {
    pub fn to_markdown(&self) -> String {
        let mut out = format!("## {}\n\n", self.title);
        if !self.table.rows.is_empty() {
            out.push_str(&self.table.to_markdown());
            out.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_renders_header_separator_and_rows() {
        let mut table = Table::new(&["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        assert_eq!(table.to_markdown(), "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}
