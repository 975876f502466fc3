//! How long parsing a line takes: IAMATs (every client request) and neighbors' AT lines
//! (every record a server receives on a link), against a baseline measured in the same run:
//! checking the line is UTF-8 and counting its spaces, which any parser of these lines does
//! at the least.
//!
//!     cargo bench --bench parse
//!
//! Prints the best of 20 passes over 100,000 distinct lines, in nanoseconds per line. The
//! parser's time moves by up to 20% between builds with the code's layout alone; to compare
//! two builds of the parser, count instructions (`bench/instructions.sh`).

use std::hint::black_box;
use std::time::Instant;

use herd::protocol::Command;

const LINES: usize = 100_000;
const PASSES: usize = 20;

/// The best time per line, in nanoseconds, of `PASSES` passes of `per_line` over `lines`.
fn best_ns(lines: &[String], per_line: fn(&[u8]) -> bool) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..PASSES {
        let start = Instant::now();
        let accepted = lines
            .iter()
            .filter(|l| per_line(black_box(l.as_bytes())))
            .count();
        assert_eq!(accepted, lines.len(), "every line is valid");
        best = best.min(start.elapsed().as_secs_f64() * 1e9 / lines.len() as f64);
    }
    best
}

/// The herd's parser: whether the line is a valid command.
#[inline(never)]
fn parse(line: &[u8]) -> bool {
    !matches!(Command::parse(line), Command::Invalid)
}

/// The baseline: whether the line is UTF-8 with at least one space (memchr's vector code,
/// compiled in its own crate, so that its speed does not move with this crate's layout).
#[inline(never)]
fn split(line: &[u8]) -> bool {
    std::str::from_utf8(line).is_ok() && black_box(memchr::memchr_iter(b' ', line).count()) > 0
}

fn main() {
    let at: Vec<String> = (0..LINES)
        .map(|i| {
            format!("AT Bona +0.000123456 client-{i}.example.org +34.068930-118.445127 1621464827.959498503")
        })
        .collect();
    let iamat: Vec<String> = (0..LINES)
        .map(|i| format!("IAMAT client-{i}.example.org +34.068930-118.445127 1621464827.959498503"))
        .collect();
    println!(
        "{:<8} {:>12} {:>14} {:>7}",
        "line", "parse ns", "baseline ns", "ratio"
    );
    for (name, lines) in [("IAMAT", &iamat), ("AT", &at)] {
        let parse = best_ns(lines, parse);
        let baseline = best_ns(lines, split);
        println!(
            "{name:<8} {parse:>12.1} {baseline:>14.1} {:>7.2}",
            parse / baseline
        );
    }
}
