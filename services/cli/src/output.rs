//! How listings are printed: aligned text, or JSON for scripts (`--output`).

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned text tables.
    Text,
    /// One JSON document.
    Json,
}

/// Prints one table row without the padding after its last column.
macro_rules! row {
    ($($arg:tt)*) => {
        println!("{}", format!($($arg)*).trim_end())
    };
}
pub(crate) use row;

/// Prints `value` as one JSON document.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `items` as a JSON array, each item as `row` makes it.
pub fn print_json_list<T>(
    items: &[T],
    row: impl Fn(&T) -> serde_json::Value,
) -> anyhow::Result<()> {
    print_json(&serde_json::Value::Array(items.iter().map(row).collect()))
}

/// Unix seconds of a timestamp (0 when absent).
pub fn unix(timestamp: &Option<prost_types::Timestamp>) -> i64 {
    timestamp.as_ref().map(|t| t.seconds).unwrap_or_default()
}
