//! `herd-bench records`: the server's memory per stored client record.
//!
//! Reads the server's resident set size (`VmRSS` of `--pid`), sends `--count` IAMATs for
//! distinct clients (ids like `r1a2b3c4d-123456`, about as long as `kiwi.cs.ucla.edu`),
//! pipelined over a few connections, waits `--settle` seconds, reads it again and divides
//! the growth by the records. The IAMATs' rate is reported too. The growth includes
//! whatever the server keeps per record (the record, its index, and any copy queued for
//! neighbors), which is the point.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::burst::{self, Burst};
use super::stats::round3;
use super::{Output, mem, progress, report};

/// `herd-bench records`.
#[derive(Debug, clap::Args)]
pub struct RecordsArgs {
    /// The server's client address, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Records (distinct clients) to store.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// The server's process id, to read its memory from /proc/PID/status.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Connections to send on.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// IAMATs per write.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Seconds to wait after the last answer before reading the memory.
    #[arg(long, default_value = "1", value_parser = super::parse_secs)]
    pub settle: Duration,
    /// How to print the result.
    #[command(flatten)]
    pub output: Output,
}

/// The result of `herd-bench records`.
#[derive(Debug, Serialize)]
pub struct RecordsReport {
    /// `"records"`.
    pub bench: &'static str,
    /// The server measured.
    pub addr: String,
    /// Its process id, if given.
    pub pid: Option<u32>,
    /// IAMATs sent.
    pub count: u64,
    /// IAMATs answered with an AT line.
    pub acked: u64,
    /// IAMATs answered otherwise or not at all.
    pub errors: u64,
    /// Seconds the IAMATs took.
    pub elapsed_s: f64,
    /// IAMATs acknowledged per second.
    pub rate_rps: f64,
    /// The average client id's length, in bytes.
    pub client_id_bytes: f64,
    /// The server's VmRSS before, in KiB.
    pub rss_before_kib: Option<u64>,
    /// Its VmRSS after, in KiB.
    pub rss_after_kib: Option<u64>,
    /// Growth per record, in bytes.
    pub bytes_per_record: Option<f64>,
    /// The first thing that went wrong, if anything did.
    pub first_error: Option<String>,
}

/// Runs `herd-bench records`.
pub async fn run(args: RecordsArgs) -> anyhow::Result<()> {
    let rss_before_kib = mem::vm_rss_kib_of(args.pid)?;
    let prefix = format!("r{}", super::run_tag());
    let acked = Arc::new(AtomicU64::new(0));
    let ticker = progress::counting(
        progress::visible(args.output.json),
        "records",
        args.count,
        Arc::clone(&acked),
    );
    let sent = burst::send(
        &Burst {
            addr: &args.addr,
            prefix: &prefix,
            count: args.count,
            conns: args.conns as usize,
            batch: args.batch as usize,
        },
        &acked,
    )
    .await?;
    ticker.finish();
    if args.pid.is_some() {
        tokio::time::sleep(args.settle).await;
    }
    let rss_after_kib = mem::vm_rss_kib_of(args.pid)?;
    let report = RecordsReport {
        bench: "records",
        addr: args.addr.clone(),
        pid: args.pid,
        count: args.count,
        acked: sent.acked,
        errors: sent.errors,
        elapsed_s: round3(sent.elapsed.as_secs_f64()),
        rate_rps: (sent.acked as f64 / sent.elapsed.as_secs_f64().max(1e-9)).round(),
        client_id_bytes: round3(mean_id_length(prefix.len(), args.count)),
        rss_before_kib,
        rss_after_kib,
        bytes_per_record: rss_before_kib
            .zip(rss_after_kib)
            .map(|(before, after)| mem::bytes_per(before, after, sent.acked)),
        first_error: sent
            .failure
            .or(sent.first_odd.map(|odd| format!("answer {odd:?}"))),
    };
    report::emit(args.output.json, &report, || {
        let memory = match (
            report.rss_before_kib,
            report.rss_after_kib,
            report.bytes_per_record,
        ) {
            (Some(before), Some(after), Some(per)) => format!(
                "  server VmRSS {before} KiB before, {after} KiB after: {per:.0} bytes per record\n"
            ),
            _ => "  (no --pid: memory not measured)\n".to_owned(),
        };
        format!(
            "records {}: {} IAMATs for distinct clients (ids of {:.1} bytes), {} acknowledged, \
             {} errors, in {:.2} s ({} /s)\n{memory}{}",
            report.addr,
            report.count,
            report.client_id_bytes,
            report.acked,
            report.errors,
            report.elapsed_s,
            report.rate_rps,
            report
                .first_error
                .as_ref()
                .map(|e| format!("  first error: {e}\n"))
                .unwrap_or_default()
        )
    })?;
    if report.errors > 0 {
        bail!("{} IAMATs were not acknowledged", report.errors);
    }
    Ok(())
}

/// The mean length of the ids `<prefix>-<i>` for i in 0..count.
fn mean_id_length(prefix: usize, count: u64) -> f64 {
    if count == 0 {
        return 0.0;
    }
    let mut digits_total = 0u64;
    let mut low = 0u64;
    let mut digits = 1u64;
    let mut high = 10u64;
    while low < count {
        let in_band = count.min(high) - low;
        digits_total += in_band * digits;
        low = high;
        high = high.saturating_mul(10);
        digits += 1;
    }
    (prefix + 1) as f64 + digits_total as f64 / count as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_lengths_average_over_the_digits() {
        assert_eq!(mean_id_length(9, 10), 11.0);
        assert_eq!(mean_id_length(9, 100), 10.0 + 1.9);
        assert!((mean_id_length(9, 1_000_000) - 15.888_89).abs() < 1e-3);
    }
}
