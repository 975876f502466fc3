//! Printing results: one JSON object on standard output with `--json` (for scripts such as
//! `bench/compare.sh`), otherwise a short table for a person. Notes for the operator go to
//! standard error, so they never mix with the JSON.

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use super::stats::{Latency, Load};

/// Prints `value` as one line of JSON if `json`, else the text `human` makes.
pub fn emit<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = if json {
        serde_json::to_string(value).context("cannot write the result as JSON")?
    } else {
        human()
    };
    say(format_args!("{}", text.trim_end()))
}

/// Prints one line on standard output, flushed at once (scripts wait for some lines).
pub fn say(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("cannot write to standard output")?;
    out.flush().context("cannot write to standard output")
}

/// Tells the operator something on standard error (failures to print are ignored).
pub fn note(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The header of a load table.
const LOAD_HEADER: &str =
    "                count  errors      req/s    p50 us    p90 us    p99 us  p99.9 us    max us";

/// A table of load runs, one row each, headed by their names.
pub fn load_table(rows: &[(&str, &Load)]) -> String {
    let mut text = String::from(LOAD_HEADER);
    text.push('\n');
    for (name, load) in rows {
        let l = &load.latency_us;
        let _ = writeln!(
            text,
            "  {name:<12} {:>7} {:>7} {:>10.0} {}",
            load.count,
            load.errors,
            load.throughput_rps,
            latency_cells(l)
        );
    }
    text
}

/// A table of latency distributions without throughput, one row each.
pub fn latency_table(rows: &[(&str, &Latency)]) -> String {
    let mut text = String::from(
        "                  p50 us    p90 us    p99 us  p99.9 us    max us   mean us\n",
    );
    for (name, l) in rows {
        let _ = writeln!(text, "  {name:<14} {} {:>9.1}", latency_cells(l), l.mean);
    }
    text
}

fn latency_cells(l: &Latency) -> String {
    format!(
        "{:>9} {:>9} {:>9} {:>9} {:>9}",
        l.p50, l.p90, l.p99, l.p999, l.max
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_table_has_a_row_per_run() {
        let load = Load {
            count: 10,
            errors: 1,
            elapsed_s: 1.0,
            throughput_rps: 10.0,
            latency_us: Latency {
                p50: 5,
                p90: 6,
                p99: 7,
                p999: 8,
                max: 9,
                mean: 5.5,
            },
        };
        let table = load_table(&[("herd", &load), ("echo", &load)]);
        assert_eq!(table.lines().count(), 3);
        assert!(table.contains("herd"), "{table}");
        let row = table.lines().nth(1).unwrap_or_default();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["herd", "10", "1", "10", "5", "6", "7", "8", "9"]);
    }
}
