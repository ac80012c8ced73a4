//! Printing results: aligned tables for people, JSON for scripts.

use serde::Serialize;

use crate::cli::{Failure, Output};

/// Prints `value` as pretty JSON, or calls `table` to print it for people.
pub fn print<T: Serialize>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T),
) -> Result<(), Failure> {
    match output {
        Output::Json => {
            let text = serde_json::to_string_pretty(value).map_err(|e| Failure {
                message: format!("cannot encode the answer as JSON: {e}"),
                code: crate::exit::FAILURE,
            })?;
            println!("{text}");
        }
        Output::Table => table(value),
    }
    Ok(())
}

/// Prints rows as columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
