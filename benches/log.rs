//! What logging costs a server per IAMAT: the line in and the answer out, each on its own
//! connection and at its own instant, as a loaded server logs them (no two lines share a
//! stamp and connection), into a real log file written by the log's thread.
//!
//!     cargo bench --bench log
//!
//! Prints the best of 50 passes over 20,000 IAMATs, in nanoseconds per IAMAT, at each
//! `[log] lines` level (at `errors` and `none`, the lines of a valid IAMAT are left out:
//! what that costs is a comparison per line). Like the
//! parser's, these times move with the code's layout; to compare two builds, count
//! instructions (`valgrind --tool=callgrind target/release/deps/log-*`).

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use herd::config::LogConfig;
use herd::server_log::{LogLines, ServerLog};

/// IAMATs per pass: their log (~5 MB) fits in the log's buffer, so none is dropped.
const IAMATS: usize = 20_000;
const PASSES: usize = 50;

fn main() {
    let lines: Vec<(String, String)> = (0..IAMATS)
        .map(|i| {
            let client =
                format!("client-{i}.example.org +34.068930-118.445127 1621464827.959498503");
            (
                format!("IAMAT {client}"),
                format!("AT Clark +0.000123456 {client}"),
            )
        })
        .collect();
    for level in [LogLines::All, LogLines::Errors, LogLines::None] {
        let (best, written) = best_of_passes(&lines, level);
        let expected = if level == LogLines::All {
            2 * IAMATS * PASSES
        } else {
            0
        };
        assert_eq!(
            written, expected,
            "{level}: every line the level keeps is written"
        );
        println!("log at {level}: {best:.1} ns per IAMAT (a line in and its answer out)");
    }
}

/// Logs `lines` (an IAMAT and its answer each) at `level`, [`PASSES`] times; returns the
/// best pass's time per IAMAT, in nanoseconds, and the number of lines in the file.
fn best_of_passes(lines: &[(String, String)], level: LogLines) -> (f64, usize) {
    let dir = std::env::temp_dir().join(format!("herd-log-bench-{}", std::process::id()));
    let config = LogConfig {
        dir: dir.clone(),
        lines: level,
    };
    let (log, writer) = ServerLog::open(&config, "Bench").expect("open the log");
    let start = SystemTime::now();
    let mut best = f64::MAX;
    for pass in 0..PASSES {
        let timer = Instant::now();
        for (i, (iamat, at)) in lines.iter().enumerate() {
            // Distinct instants, a microsecond apart, as under load.
            let at_us = Duration::from_micros((pass * IAMATS + i) as u64);
            let conn = (i % 50) as u64 + 1;
            log.line_in(conn, start + at_us, black_box(iamat.as_bytes()));
            log.line_out(
                conn,
                start + at_us + Duration::from_nanos(500),
                black_box(at),
            );
        }
        best = best.min(timer.elapsed().as_secs_f64() * 1e9 / IAMATS as f64);
        // Let the log thread catch up, so that no pass drops lines.
        while log.is_behind() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    writer.close();
    let written = std::fs::read_to_string(dir.join("Bench.log")).expect("read the log");
    let _ = std::fs::remove_dir_all(&dir);
    (best, written.lines().count())
}
