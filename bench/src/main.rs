//! `herd-bench`: tools that measure a running herd server from the outside, as
//! redis-benchmark does redis-server.
//!
//! Each subcommand is a client (or, for `echo-server`, a reference server) that talks to a
//! server over TCP exactly as phones do, so it measures any implementation of the herd's
//! line protocol, not just this one (it shares no code with the `herd` crate). The load
//! runs on one tokio current-thread runtime: the load generator is meant to be pinned to
//! one core (`taskset -c 1`, see `bench/compare.sh`) and needs no actix system. The places
//! server `whatsat` starts has a thread and runtime of its own (on the same core under
//! `compare.sh`).
//!
//! Built with `cargo build --release -p herd-bench` (or `--workspace`), it is
//! `target/release/herd-bench`, where the scripts of `bench/` look for it.
//!
//! - [`iamat`]: closed-loop IAMAT load; throughput and latency percentiles.
//! - [`flood`]: how fast IAMATs sent to one server become known at another.
//! - [`whatsat`]: WHATSAT load against a local places server the tool starts, and the
//!   latency the herd adds over calling that places server directly.
//! - [`idle`]: the server's memory per idle client connection.
//! - [`records`]: the server's memory per stored client record.
//! - [`echo`]: a minimal line server, the physical-limit reference.
//! - [`neighbor`]: `flood --listen`, watching as a neighbor of the watched server: its
//!   records arrive on the link it opens, with no WHATSAT polling.
//!
//! Helpers: [`conn`] (a pipelined client connection), [`burst`] (many IAMATs for distinct
//! clients), [`http`] (the local places server and a direct client for it), [`stats`]
//! (histograms and percentiles), [`mem`] (`/proc/PID/status`), [`progress`] (the progress
//! bar) and [`report`] (tables and JSON).

pub mod burst;
pub mod conn;
pub mod echo;
pub mod flood;
pub mod http;
pub mod iamat;
pub mod idle;
pub mod mem;
pub mod neighbor;
pub mod progress;
pub mod records;
pub mod report;
pub mod stats;
pub mod whatsat;

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// The allocator the server uses too (mimalloc without transparent huge pages, see the
/// `herd` binary): the load generator's own allocations stay cheap, so that what it costs
/// per request is small and steady beside the server it loads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Measure a running herd server from outside: load, propagation, memory.
#[derive(Debug, Parser)]
#[command(name = "herd-bench", version, about)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Closed-loop IAMAT load, a distinct client per request: throughput and latency.
    Iamat(iamat::IamatArgs),
    /// How long until IAMATs sent to one server are known at another.
    Flood(flood::FloodArgs),
    /// WHATSAT load against a local places server, and the latency the herd adds to it.
    Whatsat(whatsat::WhatsatArgs),
    /// Hold idle client connections and report the server's memory per connection.
    Idle(idle::IdleArgs),
    /// Store many client records and report the server's memory per record.
    Records(records::RecordsArgs),
    /// A minimal line server that answers each line with a line of the same length.
    EchoServer(echo::EchoArgs),
}

/// Options of every measuring subcommand.
#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Print one JSON object on standard output instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// An error ends the process with one line that says what went wrong and why (the chain of
/// causes joined), never a backtrace.
fn main() -> ExitCode {
    match run(BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed standard error must not turn the exit into a panic.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `herd-bench ...` on a current-thread tokio runtime.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        match args.command {
            BenchCommand::Iamat(args) => iamat::run(args).await,
            BenchCommand::Flood(args) => flood::run(args).await,
            BenchCommand::Whatsat(args) => whatsat::run(args).await,
            BenchCommand::Idle(args) => idle::run(args).await,
            BenchCommand::Records(args) => records::run(args).await,
            BenchCommand::EchoServer(args) => echo::run(args).await,
        }
    })
}

/// Parses a number of seconds (`10`, `0.5`) into a positive duration.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("{text:?}: seconds must be greater than 0"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A short tag that makes this run's client ids differ from every earlier run's, so that a
/// run against a server that already holds records still sends only unknown clients.
pub fn run_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    format!("{:08x}", (mixed ^ (mixed >> 32)) as u32)
}

/// A client time for IAMAT: the wall clock as `SECONDS.NANOSECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    secs: u64,
    nanos: u32,
}

impl Stamp {
    /// The time now.
    pub fn now() -> Stamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Stamp {
            secs: since.as_secs(),
            nanos: since.subsec_nanos(),
        }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_must_be_a_positive_number() {
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "x", "inf", "NaN", ""] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stamp_has_nine_fraction_digits() {
        let stamp = Stamp {
            secs: 1621464827,
            nanos: 5,
        };
        assert_eq!(stamp.to_string(), "1621464827.000000005");
    }

    #[test]
    fn a_run_tag_is_eight_hex_digits() {
        let tag = run_tag();
        assert_eq!(tag.len(), 8);
        assert!(tag.bytes().all(|b| b.is_ascii_hexdigit()), "{tag}");
    }
}
