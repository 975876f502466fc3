//! `herd-bench iamat`: closed-loop IAMAT load. Each connection writes a batch of
//! `--pipeline` IAMATs (a distinct client for every request), waits for all their answers,
//! and goes again until the time is up. A request's latency runs from the write of its batch
//! to the arrival of its answer; an answer that is not an `AT ` line is an error.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::future::join_all;
use serde::Serialize;

use super::conn::{Conn, Framing, Kind, POSITION, closed_loop};
use super::stats::{Load, Recorder, round3};
use super::{Output, Stamp, progress, report};

/// `herd-bench iamat`.
#[derive(Debug, clap::Args)]
pub struct IamatArgs {
    /// The server's client address, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Connections, each a closed loop.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// How long to run, in seconds.
    #[arg(long, default_value = "10", value_parser = super::parse_secs)]
    pub duration: Duration,
    /// IAMATs written at once on each connection before waiting for their answers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub pipeline: u32,
    /// How to print the result.
    #[command(flatten)]
    pub output: Output,
}

/// The result of `herd-bench iamat`.
#[derive(Debug, Serialize)]
pub struct IamatReport {
    /// `"iamat"`.
    pub bench: &'static str,
    /// The server measured.
    pub addr: String,
    /// Connections.
    pub conns: u32,
    /// Requests per batch.
    pub pipeline: u32,
    /// The run's intended length, in seconds.
    pub duration_s: f64,
    /// The figures.
    #[serde(flatten)]
    pub load: Load,
    /// Connections that failed before the end.
    pub failed_conns: u64,
    /// The first thing that went wrong, if anything did.
    pub first_error: Option<String>,
}

/// Runs `herd-bench iamat`.
pub async fn run(args: IamatArgs) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    report::emit(args.output.json, &report, || {
        format!(
            "iamat {}: {} connections, pipeline {}, {:.1} s\n{}{}",
            report.addr,
            report.conns,
            report.pipeline,
            report.load.elapsed_s,
            report::load_table(&[("IAMAT", &report.load)]),
            report
                .first_error
                .as_ref()
                .map(|e| format!(
                    "  {} failed connections; first error: {e}\n",
                    report.failed_conns
                ))
                .unwrap_or_default()
        )
    })
}

/// Connects, runs the load, and sums it up.
pub async fn measure(args: &IamatArgs) -> anyhow::Result<IamatReport> {
    let mut conns = Vec::with_capacity(args.conns as usize);
    for _ in 0..args.conns {
        conns.push(
            Conn::connect(&args.addr)
                .await
                .with_context(|| format!("cannot connect to {}", args.addr))?,
        );
    }
    let tag = super::run_tag();
    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress::timed(
        progress::visible(args.output.json),
        "iamat",
        args.duration,
        Arc::clone(&done),
    );
    let start = Instant::now();
    let deadline = start + args.duration;
    let pipeline = args.pipeline as usize;
    let loops = conns.into_iter().enumerate().map(|(id, conn)| {
        // A distinct client for every request.
        let prefix = format!("b{tag}-{id}");
        let mut seq = 0u64;
        let fill = move |conn: &mut Conn| {
            let stamp = Stamp::now();
            for _ in 0..pipeline {
                conn.push_iamat(format_args!("{prefix}-{seq}"), POSITION, stamp);
                seq += 1;
            }
        };
        closed_loop(
            conn,
            pipeline,
            Framing::Line,
            deadline,
            &done,
            fill,
            |answer| answer.kind == Kind::At,
        )
    });
    let outcomes = join_all(loops).await;
    let elapsed = start.elapsed();
    ticker.finish();
    let mut total = Recorder::default();
    let mut failed_conns = 0;
    let mut first_error = None;
    for outcome in outcomes {
        total.merge(&outcome.recorder)?;
        failed_conns += u64::from(outcome.failure.is_some());
        first_error = first_error.or_else(|| outcome.first_error());
    }
    Ok(IamatReport {
        bench: "iamat",
        addr: args.addr.clone(),
        conns: args.conns,
        pipeline: args.pipeline,
        duration_s: round3(args.duration.as_secs_f64()),
        load: total.load(elapsed),
        failed_conns,
        first_error,
    })
}
