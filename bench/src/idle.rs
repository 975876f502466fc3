//! `herd-bench idle`: the server's memory per idle client connection.
//!
//! Reads the server's resident set size (`VmRSS` of `--pid`), opens `--conns` connections
//! that send nothing, and checks that they are live, not just queued in the kernel's
//! backlog of a server that could not accept them: the last one sends one IAMAT and must
//! get its AT line (the server accepts in order, so all are accepted by then). It waits
//! `--settle` seconds, reads the memory again and divides the growth by the connections;
//! then a sample of the other connections each send an IAMAT too. Finally it closes them
//! all and reads the memory once more. Each connection is a file descriptor here too:
//! raise the limit first (`ulimit -n 65536`) for thousands of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::conn::{Conn, Framing, Kind, POSITION};
use super::{Output, Stamp, mem, progress, report};

/// How many connections at most the liveness check tries.
const SAMPLE: usize = 100;

/// How long a sampled connection may take to answer its IAMAT.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Linux's "too many open files" (`EMFILE`, and `ENFILE` for the whole system).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// `herd-bench idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// The server's client address, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Idle connections to hold.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// The server's process id, to read its memory from /proc/PID/status.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Seconds to wait, connections open, before reading the memory.
    #[arg(long, default_value = "1", value_parser = super::parse_secs)]
    pub settle: Duration,
    /// Seconds to keep the connections open after the measurement (for a look by hand).
    #[arg(long, value_parser = super::parse_secs)]
    pub hold: Option<Duration>,
    /// How to print the result.
    #[command(flatten)]
    pub output: Output,
}

/// The result of `herd-bench idle`.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    /// `"idle"`.
    pub bench: &'static str,
    /// The server measured.
    pub addr: String,
    /// Its process id, if given.
    pub pid: Option<u32>,
    /// Connections held.
    pub conns: u32,
    /// The server's VmRSS before, in KiB.
    pub rss_before_kib: Option<u64>,
    /// Its VmRSS with the connections open, in KiB.
    pub rss_open_kib: Option<u64>,
    /// Its VmRSS after they closed, in KiB.
    pub rss_closed_kib: Option<u64>,
    /// Growth per connection, in bytes.
    pub bytes_per_conn: Option<f64>,
    /// Connections whose IAMAT was answered with an AT line.
    pub live: u32,
    /// Connections tried.
    pub sampled: u32,
}

/// Runs `herd-bench idle`.
pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let rss_before_kib = mem::vm_rss_kib_of(args.pid)?;
    let opened = Arc::new(AtomicU64::new(0));
    let ticker = progress::counting(
        progress::visible(args.output.json),
        "connect",
        u64::from(args.conns),
        Arc::clone(&opened),
    );
    let mut conns = Vec::with_capacity(args.conns as usize);
    for n in 0..args.conns {
        match Conn::connect(&args.addr).await {
            Ok(conn) => conns.push(conn),
            Err(e) if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) => bail!(
                "cannot open connection {} of {}: {e}; this process may have {} files open: \
                 raise the limit first (ulimit -n 65536)",
                n + 1,
                args.conns,
                mem::open_files_limit().unwrap_or_else(|| "?".into())
            ),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot open connection {} of {} to {}",
                        n + 1,
                        args.conns,
                        args.addr
                    )
                });
            }
        }
        opened.fetch_add(1, Ordering::Relaxed);
    }
    ticker.finish();
    // The server accepts in order: once the last connection has its answer, every one
    // before it is accepted too, so the memory read next counts all of them.
    let tag = super::run_tag();
    let last = conns.len().saturating_sub(1);
    let mut live = 0;
    if let Some(conn) = conns.last_mut() {
        live += u32::from(answers_iamat(conn, &tag, last).await);
    }
    tokio::time::sleep(args.settle).await;
    let rss_open_kib = mem::vm_rss_kib_of(args.pid)?;

    // The rest of the sample: each connection, not just the queue, is served.
    let step = conns.len().div_ceil(SAMPLE).max(1);
    let mut sampled = 1;
    for (n, conn) in conns[..last].iter_mut().enumerate().step_by(step) {
        sampled += 1;
        live += u32::from(answers_iamat(conn, &tag, n).await);
    }
    if let Some(hold) = args.hold {
        tokio::time::sleep(hold).await;
    }
    drop(conns);
    if args.pid.is_some() {
        tokio::time::sleep(args.settle).await;
    }
    let rss_closed_kib = mem::vm_rss_kib_of(args.pid)?;
    let report = IdleReport {
        bench: "idle",
        addr: args.addr.clone(),
        pid: args.pid,
        conns: args.conns,
        rss_before_kib,
        rss_open_kib,
        rss_closed_kib,
        bytes_per_conn: rss_before_kib
            .zip(rss_open_kib)
            .map(|(before, open)| mem::bytes_per(before, open, u64::from(args.conns))),
        live,
        sampled,
    };
    report::emit(args.output.json, &report, || {
        let memory = match (
            report.rss_before_kib,
            report.rss_open_kib,
            report.bytes_per_conn,
        ) {
            (Some(before), Some(open), Some(per)) => format!(
                "  server VmRSS {before} KiB before, {open} KiB with the connections open, \
                 {} KiB after they closed\n  {per:.0} bytes per idle connection\n",
                report.rss_closed_kib.unwrap_or_default()
            ),
            _ => "  (no --pid: memory not measured)\n".to_owned(),
        };
        format!(
            "idle {}: {} connections held\n{memory}  live: {} of {} sampled answered an IAMAT\n",
            report.addr, report.conns, report.live, report.sampled
        )
    })?;
    if live < sampled {
        bail!(
            "{} of {sampled} sampled connections did not answer: the server did not accept them all",
            sampled - live
        );
    }
    Ok(())
}

/// Whether connection `n` answers one IAMAT with an AT line, within [`ANSWER_TIMEOUT`].
async fn answers_iamat(conn: &mut Conn, tag: &str, n: usize) -> bool {
    conn.push_iamat(format_args!("i{tag}-{n}"), POSITION, Stamp::now());
    let mut kind = Kind::Other;
    let answered = tokio::time::timeout(
        ANSWER_TIMEOUT,
        conn.exchange(1, Framing::Line, |answer| kind = answer.kind),
    )
    .await;
    matches!(answered, Ok(Ok(()))) && kind == Kind::At
}
