//! Rendering: tables and JSON for stdout, and errors for stderr with the hints that only
//! make sense on a command line ("pass --force"). Output is built completely before
//! anything is printed, so a failing command prints nothing on stdout.

use std::net::IpAddr;

use serde::Serialize;
use vipvisor_api::{ApiError, ConfigReport, ErrorCode};
use vipvisor_model::{Labels, Pool};

use crate::args::Format;

/// The line an error gets on stderr: the API's message, and what to type next.
pub fn error_text(e: &ApiError) -> String {
    let hint = match e.code {
        ErrorCode::WouldStrand => ". Pass --force to release them",
        ErrorCode::UnknownPool => " (see `vipvisor pool list`)",
        ErrorCode::PoolExists => " (use `vipvisor apply` to change a pool)",
        ErrorCode::UnknownReservation => " (see `vipvisor reserve list`)",
        ErrorCode::InvalidValue if e.message.contains("allow_empty") => " (pass --allow-empty)",
        ErrorCode::NoEligiblePool if e.message.contains("there are no pools") => " (see `vipvisor pool add`)",
        _ => "",
    };
    format!("{}{hint}", e.message)
}

pub fn render<T: Serialize + ?Sized>(
    fmt: Format,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<String, ApiError> {
    Ok(match fmt {
        Format::Json => {
            serde_json::to_string_pretty(value).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))? + "\n"
        }
        Format::Table => text(),
    })
}

pub fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_string()).collect()
}

/// The widest a table cell gets; longer values end in "…" (`-o json` has them whole).
pub const MAX_CELL: usize = 200;

/// A value as a table cell: control characters escaped (an ESC or a newline in a note
/// cannot move the cursor or forge a row), cut at [`MAX_CELL`] characters.
pub fn cell(s: &str) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in s.chars() {
        let piece: String = if c.is_control() { c.escape_debug().collect() } else { c.to_string() };
        let w = piece.chars().count();
        if n + w > MAX_CELL - 1 {
            out.push('…');
            return out;
        }
        n += w;
        out.push_str(&piece);
    }
    out
}

pub fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|s| cell(s)).collect()).collect();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| if i + 1 == r.len() { s.clone() } else { format!("{s:<w$}", w = widths[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn blocks_text(p: &Pool) -> String {
    p.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub fn addrs_text(a: &[IpAddr]) -> String {
    a.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

pub fn labels_text(l: &Labels) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

pub fn released_text(r: &ConfigReport) -> String {
    r.released.iter().map(|a| format!("released {} from {} (forced)\n", addrs_text(&a.addresses), a.service)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cells_are_cut_and_control_characters_escaped() {
        let long = "a".repeat(70_000);
        let t = table(&[row(["ID", "ACTOR"]), vec!["1".into(), long.clone()], vec![long, "x".into()]]);
        assert!(t.lines().all(|l| l.chars().count() <= 2 * MAX_CELL + 2), "cells are cut");
        assert!(t.contains('…'));
        let t = table(&[vec!["\u{1b}[2J\u{7}".into(), "note\nforged row".into()]]);
        assert_eq!(t.lines().count(), 1, "a newline in a cell does not make a row: {t:?}");
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        assert!(t.contains("\\u{1b}[2J\\u{7}") && t.contains("note\\nforged row"), "{t:?}");
        assert_eq!(cell("plain"), "plain");
    }
}
