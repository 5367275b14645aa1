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

pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
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
