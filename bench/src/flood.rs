//! `herd-bench flood`: how fast a record sent to one server (`--send`) becomes known at
//! another (`--watch`), typically a few hops away.
//!
//! - Burst (the default): `--count` IAMATs for distinct clients go to the sending server
//!   over a few pipelined connections; `T_ack` is when all are acknowledged. Then the
//!   watched server is asked WHATSAT for each of them, in pipelined batches, again and
//!   again for those it does not know yet (`? ` answers), until it knows all: `T_known`
//!   (from the first write) is when the last became known. Reported: both, and
//!   `T_known / T_ack`.
//! - Rate (`--rate R`): `--count` samples, one IAMAT every 1/R s to the sending server;
//!   meanwhile one connection to the watched server asks WHATSAT for every sample not yet
//!   known, in a tight loop. A sample's propagation is from the write of its IAMAT to the
//!   first WHATSAT answer that is an `AT ` line: an upper bound (by up to one WHATSAT round
//!   trip) of when the record arrived.
//!
//! A WHATSAT of a known client makes the watched server call its places API; only the
//! answer's first line matters here, so a server with no key (which answers at once with
//! `REQUEST_DENIED`) is the quickest to watch.
//!
//! With `--listen ADDR` the tool watches as a neighbor instead of a client: the watched
//! server's config names a neighbor at ADDR, the tool accepts that link and timestamps each
//! record as it arrives. No polling: that is exact (to the one link write from the watched
//! server, which happens as it stores the record), and it costs the watched server only one
//! more link (a write per batch of records, a log line per record), where polling adds a
//! WHATSAT per record per round and a round's delay to `T_known`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use super::burst::{self, Burst};
use super::conn::{Conn, Framing, Kind, POSITION};
use super::neighbor::NeighborWatch;
use super::stats::{Latency, Recorder, round3};
use super::{Output, Stamp, progress, report};

/// How long to pause between two polling rounds of a burst that learned nothing new.
const IDLE_POLL_PAUSE: Duration = Duration::from_millis(1);

/// `herd-bench flood`.
#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    /// The server the IAMATs go to, HOST:PORT.
    #[arg(long)]
    pub send: String,
    /// The server watched for them, HOST:PORT.
    #[arg(long)]
    pub watch: String,
    /// IAMATs in the burst, or samples at the rate.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Send one IAMAT every 1/RATE s and time each one's spread, instead of a burst.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connections to the sending server for a burst.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// Requests per write in a burst (IAMATs, and WHATSATs when polling).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Watch as a neighbor of `--watch`: listen here for its link (the watched server's
    /// config must have a neighbor at this address) and take each record's arrival on it,
    /// instead of polling with WHATSAT.
    #[arg(long)]
    pub listen: Option<String>,
    /// Give up on records still unknown at the watched server after this many seconds.
    #[arg(long, default_value = "30", value_parser = super::parse_secs)]
    pub timeout: Duration,
    /// How to print the result.
    #[command(flatten)]
    pub output: Output,
}

/// The result of a burst.
#[derive(Debug, Serialize)]
pub struct BurstReport {
    /// `"flood"`.
    pub bench: &'static str,
    /// `"burst"`.
    pub mode: &'static str,
    /// Where the IAMATs went.
    pub send: String,
    /// Where they were watched for.
    pub watch: String,
    /// IAMATs sent.
    pub count: u64,
    /// IAMATs answered with an AT line.
    pub acked: u64,
    /// IAMATs answered otherwise or not at all.
    pub ack_errors: u64,
    /// Milliseconds from the first write until all were acknowledged.
    pub t_ack_ms: f64,
    /// IAMATs acknowledged per second.
    pub ack_rps: f64,
    /// Records the watched server knew in the end.
    pub known: u64,
    /// Records it still did not know when the tool gave up.
    pub missing: u64,
    /// Milliseconds from the first write until the watched server knew the last record.
    pub t_known_ms: f64,
    /// `t_known_ms / t_ack_ms`.
    pub ratio: f64,
    /// Milliseconds until the first record, and until half of them, arrived: how the
    /// records flowed between the first write and the last (watching as a neighbor only;
    /// polling learns of a record only a round late, so it reports none).
    pub t_first_known_ms: Option<f64>,
    /// See `t_first_known_ms`.
    pub t_half_known_ms: Option<f64>,
    /// WHATSAT rounds over the records not yet known (0 when watching as a neighbor).
    pub poll_rounds: u64,
    /// How the watched server was watched: `"whatsat"` or `"neighbor"`.
    pub watched_by: &'static str,
    /// The first thing that went wrong, if anything did.
    pub first_error: Option<String>,
}

/// The result of rate mode.
#[derive(Debug, Serialize)]
pub struct RateReport {
    /// `"flood"`.
    pub bench: &'static str,
    /// `"rate"`.
    pub mode: &'static str,
    /// Where the IAMATs went.
    pub send: String,
    /// Where they were watched for.
    pub watch: String,
    /// IAMATs per second asked for.
    pub rate: f64,
    /// IAMATs per second achieved, over the samples written.
    pub achieved_rate: f64,
    /// Samples asked for (`--count`); fewer are written if the sender fails (`first_error`).
    pub count: u64,
    /// Samples seen at the watched server.
    pub known: u64,
    /// Samples not seen there within the timeout.
    pub lost: u64,
    /// IAMATs not answered with an AT line.
    pub ack_errors: u64,
    /// WHATSATs sent to the watched server (0 when watching as a neighbor).
    pub polls: u64,
    /// How the watched server was watched: `"whatsat"` or `"neighbor"`.
    pub watched_by: &'static str,
    /// IAMAT round trips at the sending server.
    pub ack_us: Latency,
    /// From each IAMAT's write to the first WHATSAT answer at the watched server that knew
    /// it, or (as a neighbor) to its arrival on the watched server's link.
    pub propagation_us: Latency,
    /// The first thing that went wrong, if anything did.
    pub first_error: Option<String>,
}

/// Runs `herd-bench flood`.
pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    match args.rate {
        None => run_burst(&args).await,
        Some(rate) if rate.is_finite() && rate > 0.0 && rate <= 1e6 => run_rate(&args, rate).await,
        Some(rate) => bail!("--rate {rate}: must be above 0 and at most a million per second"),
    }
}

async fn run_burst(args: &FloodArgs) -> anyhow::Result<()> {
    let prefix = format!("f{}", super::run_tag());
    let mut watch = Watch::open(args, &prefix).await?;
    let visible = progress::visible(args.output.json);
    let acked = Arc::new(AtomicU64::new(0));
    let ticker = progress::counting(visible, "send", args.count, Arc::clone(&acked));
    let sent = burst::send(
        &Burst {
            addr: &args.send,
            prefix: &prefix,
            count: args.count,
            conns: args.conns as usize,
            batch: args.batch as usize,
        },
        &acked,
    )
    .await?;
    ticker.finish();
    // Timed from the first write, not from before the connections were made: the time to
    // connect would count in both T_ack and T_known and pull their ratio towards 1.
    let start = sent.started;
    let t_ack = sent.elapsed;

    let give_up = Instant::now() + args.timeout;
    let known = match &mut watch {
        Watch::Neighbor(neighbor) => {
            let ticker = progress::counting(visible, "known", args.count, neighbor.known());
            neighbor.wait_all(give_up).await;
            ticker.finish();
            let mut arrived: Vec<Instant> = neighbor.arrivals().into_iter().flatten().collect();
            arrived.sort_unstable();
            Known {
                missing: args.count - arrived.len() as u64,
                last: arrived.last().copied().unwrap_or(start),
                first_and_half: arrived
                    .first()
                    .zip(arrived.get(arrived.len() / 2))
                    .map(|(first, half)| (first.duration_since(start), half.duration_since(start))),
                rounds: 0,
            }
        }
        Watch::Whatsat(conn) => poll_burst(conn, args, &prefix, start, give_up).await?,
    };
    let mut first_error = sent.failure.clone().or(sent.first_odd.clone());
    if known.missing > 0 {
        first_error = first_error.or(Some(format!(
            "{} records still unknown at {} after {:?}",
            known.missing, args.watch, args.timeout
        )));
    }
    let t_known = known.last.duration_since(start);
    let ms = |d: Duration| round3(d.as_secs_f64() * 1000.0);
    let report = BurstReport {
        bench: "flood",
        mode: "burst",
        send: args.send.clone(),
        watch: args.watch.clone(),
        count: args.count,
        acked: sent.acked,
        ack_errors: sent.errors,
        t_ack_ms: ms(t_ack),
        ack_rps: (sent.acked as f64 / t_ack.as_secs_f64().max(1e-9)).round(),
        known: args.count - known.missing,
        missing: known.missing,
        t_known_ms: ms(t_known),
        ratio: round3(t_known.as_secs_f64() / t_ack.as_secs_f64().max(1e-9)),
        t_first_known_ms: known.first_and_half.map(|(first, _)| ms(first)),
        t_half_known_ms: known.first_and_half.map(|(_, half)| ms(half)),
        poll_rounds: known.rounds,
        watched_by: watch.name(),
        first_error,
    };
    report::emit(args.output.json, &report, || {
        let how = match (report.t_first_known_ms, report.t_half_known_ms) {
            (Some(first), Some(half)) => {
                format!("as its neighbor; the first after {first:.1} ms, half after {half:.1} ms")
            }
            _ => format!("{} polling rounds", report.poll_rounds),
        };
        format!(
            "flood burst: {} IAMATs to {}, watched at {}\n  \
             acknowledged {} ({} errors) in {:.1} ms ({} /s)\n  \
             known at {}: {} ({} missing) after {:.1} ms ({how})\n  \
             T_known / T_ack = {:.2}{}\n",
            report.count,
            report.send,
            report.watch,
            report.acked,
            report.ack_errors,
            report.t_ack_ms,
            report.ack_rps,
            report.watch,
            report.known,
            report.missing,
            report.t_known_ms,
            report.ratio,
            report
                .first_error
                .as_ref()
                .map(|e| format!("\n  first error: {e}"))
                .unwrap_or_default()
        )
    })
}

/// How the watched server is watched.
enum Watch {
    /// Asked WHATSAT for each record, again and again.
    Whatsat(Conn),
    /// Its link to a neighbor played by the tool.
    Neighbor(NeighborWatch),
}

impl Watch {
    /// Connects to the watched server, or (with `--listen`) accepts its link, for the
    /// records of clients `<prefix>-<i>`.
    async fn open(args: &FloodArgs, prefix: &str) -> anyhow::Result<Watch> {
        Ok(match &args.listen {
            Some(listen) => Watch::Neighbor(
                NeighborWatch::accept(listen, prefix, args.count, args.timeout).await?,
            ),
            None => Watch::Whatsat(
                Conn::connect(&args.watch)
                    .await
                    .with_context(|| format!("cannot connect to {}", args.watch))?,
            ),
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Watch::Whatsat(_) => "whatsat",
            Watch::Neighbor(_) => "neighbor",
        }
    }
}

/// What the watched server knew of a burst in the end.
struct Known {
    /// Records it never knew.
    missing: u64,
    /// When the last one became known.
    last: Instant,
    /// How long after the start the first one, and half of them, became known, where the
    /// watch sees arrivals as they happen.
    first_and_half: Option<(Duration, Duration)>,
    /// WHATSAT rounds it took.
    rounds: u64,
}

/// Asks the watched server WHATSAT for every record of the burst it does not know yet,
/// round after round, until it knows all or `give_up`.
async fn poll_burst(
    watch: &mut Conn,
    args: &FloodArgs,
    prefix: &str,
    start: Instant,
    give_up: Instant,
) -> anyhow::Result<Known> {
    let known_count = Arc::new(AtomicU64::new(0));
    let visible = progress::visible(args.output.json);
    let ticker = progress::counting(visible, "known", args.count, Arc::clone(&known_count));
    let mut pending: Vec<u64> = (0..args.count).collect();
    let mut still = Vec::with_capacity(pending.len());
    let mut last = start;
    let mut rounds = 0;
    while !pending.is_empty() && Instant::now() < give_up {
        rounds += 1;
        let before = pending.len();
        for chunk in pending.chunks(args.batch as usize) {
            for i in chunk {
                watch.push_whatsat(format_args!("{prefix}-{i}"), 10, 1);
            }
            let mut k = 0;
            let result = watch
                .exchange(chunk.len(), Framing::Whatsat, |answer| {
                    if answer.kind == Kind::At {
                        last = Instant::now();
                        known_count.fetch_add(1, Ordering::Relaxed);
                    } else {
                        still.push(chunk[k]);
                    }
                    k += 1;
                })
                .await;
            if let Err(e) = result {
                bail!("WHATSAT to {} failed: {e}", args.watch);
            }
        }
        std::mem::swap(&mut pending, &mut still);
        still.clear();
        if pending.len() == before {
            tokio::time::sleep(IDLE_POLL_PAUSE).await;
        }
    }
    ticker.finish();
    Ok(Known {
        missing: pending.len() as u64,
        last,
        first_and_half: None,
        rounds,
    })
}

async fn run_rate(args: &FloodArgs, rate: f64) -> anyhow::Result<()> {
    let prefix = format!("p{}", super::run_tag());
    let mut watch = Watch::open(args, &prefix).await?;
    let watched_by = watch.name();
    let mut send = Conn::connect(&args.send)
        .await
        .with_context(|| format!("cannot connect to {}", args.send))?;
    let count = args.count;
    let timeout = args.timeout;
    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress::counting(
        progress::visible(args.output.json),
        "samples",
        count,
        Arc::clone(&done),
    );
    let (samples, mut sampled) = mpsc::unbounded_channel::<(u64, Instant)>();

    let sender = async {
        let mut acks = Recorder::default();
        let mut failure = None;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let start = Instant::now();
        let mut written = 0;
        for i in 0..count {
            tick.tick().await;
            send.push_iamat(format_args!("{prefix}-{i}"), POSITION, Stamp::now());
            let sent = Instant::now();
            let _ = samples.send((i, sent));
            written += 1;
            let mut kind = Kind::Other;
            if let Err(e) = send
                .exchange(1, Framing::Line, |answer| kind = answer.kind)
                .await
            {
                acks.errors(count - i);
                failure = Some(format!("IAMAT to {} failed: {e}", args.send));
                break;
            }
            if kind == Kind::At {
                acks.record(sent.elapsed());
            } else {
                acks.error();
            }
        }
        let sending = start.elapsed();
        drop(samples);
        (acks, written, sending, failure)
    };

    let poller = async {
        let watch = match &mut watch {
            Watch::Whatsat(conn) => conn,
            Watch::Neighbor(neighbor) => {
                return take_arrivals(neighbor, &mut sampled, timeout, &done).await;
            }
        };
        let mut propagation = Recorder::default();
        let mut outstanding: Vec<(u64, Instant)> = Vec::new();
        let mut lost = 0u64;
        let mut polls = 0u64;
        let mut failure = None;
        let mut open = true;
        loop {
            if outstanding.is_empty() {
                if !open {
                    break;
                }
                match sampled.recv().await {
                    Some(sample) => outstanding.push(sample),
                    None => break,
                }
            }
            loop {
                match sampled.try_recv() {
                    Ok(sample) => outstanding.push(sample),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            for (i, _) in &outstanding {
                watch.push_whatsat(format_args!("{prefix}-{i}"), 10, 1);
            }
            let mut known = vec![false; outstanding.len()];
            let mut k = 0;
            let result = watch
                .exchange(outstanding.len(), Framing::Whatsat, |answer| {
                    if answer.kind == Kind::At {
                        propagation.record(outstanding[k].1.elapsed());
                        known[k] = true;
                    }
                    k += 1;
                })
                .await;
            polls += outstanding.len() as u64;
            if let Err(e) = result {
                failure = Some(format!("WHATSAT to {} failed: {e}", args.watch));
                lost += outstanding.len() as u64;
                break;
            }
            let mut k = 0;
            outstanding.retain(|(_, sent)| {
                let keep = !known[k];
                k += 1;
                if keep && sent.elapsed() > timeout {
                    lost += 1;
                    return false;
                }
                keep
            });
            done.store(propagation.count() + lost, Ordering::Relaxed);
        }
        // Samples never received (the poller stopped early) are lost too.
        while sampled.try_recv().is_ok() {
            lost += 1;
        }
        (propagation, lost, polls, failure)
    };

    let ((acks, written, sending, send_failure), (propagation, lost, polls, poll_failure)) =
        tokio::join!(sender, poller);
    ticker.finish();
    let report = RateReport {
        bench: "flood",
        mode: "rate",
        send: args.send.clone(),
        watch: args.watch.clone(),
        rate,
        // Of the samples written: a sender that failed stopped short of `count`.
        achieved_rate: (written as f64 / sending.as_secs_f64().max(1e-9)).round(),
        count,
        known: propagation.count(),
        lost,
        ack_errors: acks.load(sending).errors,
        polls,
        watched_by,
        ack_us: acks.latency(),
        propagation_us: propagation.latency(),
        first_error: send_failure
            .or(poll_failure)
            .or(send.first_odd().map(|odd| format!("IAMAT answer {odd:?}"))),
    };
    report::emit(args.output.json, &report, || {
        format!(
            "flood rate: {} samples at {}/s (achieved {}/s) to {}, watched at {}\n  \
             known {}, lost {}, IAMAT errors {}, {}\n{}{}",
            report.count,
            report.rate,
            report.achieved_rate,
            report.send,
            report.watch,
            report.known,
            report.lost,
            report.ack_errors,
            match report.watched_by {
                "neighbor" => "watched as its neighbor".to_owned(),
                _ => format!("{} WHATSATs", report.polls),
            },
            report::latency_table(&[
                ("IAMAT ack", &report.ack_us),
                ("propagation", &report.propagation_us),
            ]),
            report
                .first_error
                .as_ref()
                .map(|e| format!("  first error: {e}\n"))
                .unwrap_or_default()
        )
    })
}

/// Rate mode as a neighbor: each sample's propagation is from the write of its IAMAT to its
/// arrival on the watched server's link. Waits for the last ones up to `timeout`.
async fn take_arrivals(
    neighbor: &NeighborWatch,
    sampled: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    timeout: Duration,
    done: &AtomicU64,
) -> (Recorder, u64, u64, Option<String>) {
    let mut sent = Vec::new();
    while let Some(sample) = sampled.recv().await {
        sent.push(sample);
        done.store(neighbor.known().load(Ordering::Relaxed), Ordering::Relaxed);
    }
    neighbor.wait_all(Instant::now() + timeout).await;
    let arrivals = neighbor.arrivals();
    let mut propagation = Recorder::default();
    let mut lost = 0;
    for (i, at) in sent {
        match arrivals.get(i as usize).copied().flatten() {
            Some(arrived) => propagation.record(arrived.saturating_duration_since(at)),
            None => lost += 1,
        }
    }
    done.store(propagation.count() + lost, Ordering::Relaxed);
    (propagation, lost, 0, None)
}
