//! How listings are printed: aligned text tables (`comfy-table`), or JSON
//! for scripts (`--output`).

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text tables.
    Text,
    /// One JSON document.
    Json,
}

/// One column of a listing's table: its title, and where its cells line
/// up (numbers on the right).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    title: &'static str,
    number: bool,
}

/// A column of text, lined up on the left.
pub const fn text(title: &'static str) -> Column {
    Column {
        title,
        number: false,
    }
}

/// A column of numbers, lined up on the right.
pub const fn number(title: &'static str) -> Column {
    Column {
        title,
        number: true,
    }
}

/// Prints `items`: with `--output json` as an array of what `json` makes of
/// each, otherwise as a table of `columns` with the cells `cells` makes.
pub fn print_list<T>(
    output: Output,
    items: &[T],
    columns: &[Column],
    cells: impl Fn(&T) -> Vec<String>,
    json: impl Fn(&T) -> serde_json::Value,
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&serde_json::Value::Array(items.iter().map(json).collect())),
        Output::Text => {
            println!("{}", table(columns, items.iter().map(cells)));
            Ok(())
        }
    }
}

/// `rows` under the titles of `columns`, each column as wide as its widest
/// cell and two spaces from the next; no blanks at either end of a line
/// (scripts cut on them).
fn table(columns: &[Column], rows: impl Iterator<Item = Vec<String>>) -> String {
    use comfy_table::{CellAlignment, Table, presets};
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(columns.iter().map(|c| c.title))
        .add_rows(rows);
    for (column, spec) in table.column_iter_mut().zip(columns) {
        column.set_padding((0, 2));
        if spec.number {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
        .lines()
        .map(|line| line.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints `value` as one JSON document.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Unix seconds of a timestamp (0 when absent).
pub fn unix(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    timestamp.as_ref().map(|t| t.seconds).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_numbers_line_up_right() {
        let printed = table(
            &[text("METER"), number("SAMPLES"), text("UNIT")],
            [
                vec!["cpu".to_string(), "5".to_string(), "%".to_string()],
                vec!["disk_io".to_string(), "12345".to_string(), "B".to_string()],
            ]
            .into_iter(),
        );
        assert_eq!(
            printed,
            "METER    SAMPLES  UNIT\n\
             cpu            5  %\n\
             disk_io    12345  B"
        );
    }

    #[test]
    fn an_empty_listing_is_its_titles() {
        assert_eq!(
            table(&[text("ID"), text("NAME")], std::iter::empty()),
            "ID  NAME"
        );
    }
}
