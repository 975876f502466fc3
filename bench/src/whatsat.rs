//! `herd-bench whatsat`: the latency a herd server adds to a places call.
//!
//! The tool starts a fast local places server on `--places-addr` that answers every request
//! with a legacy Nearby Search answer (the herd's `tests/fixtures/places/legacy_ok.json`).
//! The herd server under test must have been started with that URL (`HERD_PLACES__URL`),
//! a key (`GOOGLE_PLACES_API_KEY`, any value) and, for a real call per WHATSAT, its answer
//! cache off (`HERD_PLACES__CACHE_TTL_S=0`). The tool then
//!
//! 1. reports one client per connection (IAMAT, a distinct position each, so that no two
//!    connections' searches can share a call), and checks with one WHATSAT that the server
//!    really calls the local places server;
//! 2. measures direct GETs to the places server: `--conns` keep-alive connections, each a
//!    closed loop, for `--duration`: the baseline;
//! 3. runs closed-loop WHATSAT load on `--conns` connections for `--duration` (with
//!    `--pipeline` above 1, the WHATSATs of one batch ask different radii, so each is a
//!    call of its own);
//! 4. reports both distributions and what the herd adds: its median and 99th percentile
//!    minus the direct ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::future::join_all;
use serde::Serialize;

use super::conn::{Answer, Conn, Framing, Kind, closed_loop};
use super::http::{HttpClient, PLACES_PATH, PlacesResponder};
use super::stats::{Load, Recorder, round3};
use super::{Output, Stamp, progress, report};

/// What the local places server answers: a real legacy Nearby Search answer.
const PLACES_ANSWER: &str = include_str!("../../tests/fixtures/places/legacy_ok.json");

/// `herd-bench whatsat`.
#[derive(Debug, clap::Args)]
pub struct WhatsatArgs {
    /// The herd server's client address, HOST:PORT.
    #[arg(long)]
    pub addr: String,
    /// Where the tool's places server listens; the herd server must call
    /// http://PLACES_ADDR/nearbysearch/json.
    #[arg(long, default_value = "127.0.0.1:18080")]
    pub places_addr: String,
    /// Connections, each a closed loop (for the direct baseline too).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,
    /// How long each of the two runs lasts, in seconds.
    #[arg(long, default_value = "10", value_parser = super::parse_secs)]
    pub duration: Duration,
    /// WHATSATs written at once on each connection before waiting for their answers.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub pipeline: u32,
    /// How to print the result.
    #[command(flatten)]
    pub output: Output,
}

/// The latency the herd adds, in microseconds (herd minus direct).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Added {
    /// At the median.
    pub p50: i64,
    /// At the 99th percentile.
    pub p99: i64,
}

/// The result of `herd-bench whatsat`.
#[derive(Debug, Serialize)]
pub struct WhatsatReport {
    /// `"whatsat"`.
    pub bench: &'static str,
    /// The herd server measured.
    pub addr: String,
    /// The local places server's URL.
    pub places_url: String,
    /// Connections.
    pub conns: u32,
    /// WHATSATs per batch.
    pub pipeline: u32,
    /// Each run's intended length, in seconds.
    pub duration_s: f64,
    /// GETs straight to the places server.
    pub direct: Load,
    /// WHATSATs to the herd server (errors include answers with a places error).
    pub herd: Load,
    /// WHATSAT answers whose JSON was a places error object.
    pub places_errors: u64,
    /// Calls the places server got during the WHATSAT run.
    pub places_calls: u64,
    /// Places calls per WHATSAT (1 when every WHATSAT is a real call).
    pub calls_per_whatsat: f64,
    /// What the herd adds to the direct latency.
    pub added_us: Added,
    /// The first thing that went wrong, if anything did.
    pub first_error: Option<String>,
}

/// Runs `herd-bench whatsat`.
pub async fn run(args: WhatsatArgs) -> anyhow::Result<()> {
    let places = PlacesResponder::start(&args.places_addr, PLACES_ANSWER)?;
    let hint = format!(
        "start the herd server with HERD_PLACES__URL={} HERD_PLACES__CACHE_TTL_S=0 \
         GOOGLE_PLACES_API_KEY=bench (any key)",
        places.url()
    );
    if !args.output.json {
        report::note(format_args!("places server on {}: {hint}", places.url()));
    }
    let tag = super::run_tag();
    let mut conns = Vec::with_capacity(args.conns as usize);
    for k in 0..args.conns {
        let mut conn = Conn::connect(&args.addr)
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        conn.push_iamat(format_args!("w{tag}-{k}"), &position(k), Stamp::now());
        let mut kind = Kind::Other;
        conn.exchange(1, Framing::Line, |answer| kind = answer.kind)
            .await
            .with_context(|| format!("IAMAT to {} failed", args.addr))?;
        if kind != Kind::At {
            bail!(
                "{} answered an IAMAT with {:?}",
                args.addr,
                conn.first_odd().unwrap_or_default()
            );
        }
        conns.push(conn);
    }
    check_calls(&mut conns[0], &places, &tag, &hint).await?;

    let visible = progress::visible(args.output.json);
    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress::timed(visible, "direct", args.duration, Arc::clone(&done));
    let direct = direct_load(places.addr(), args.conns, args.duration, &done).await?;
    ticker.finish();

    let done = Arc::new(AtomicU64::new(0));
    let ticker = progress::timed(visible, "whatsat", args.duration, Arc::clone(&done));
    let calls_before = places.requests();
    let start = Instant::now();
    let deadline = start + args.duration;
    let pipeline = args.pipeline as usize;
    let done = &done;
    let loops = conns.into_iter().enumerate().map(|(k, conn)| {
        let client = format!("w{tag}-{k}");
        async move {
            let fill = |conn: &mut Conn| {
                for j in 0..pipeline {
                    // Pipelined, each a different search: identical ones in flight would share
                    // one places call.
                    let radius = if pipeline == 1 { 10 } else { 1 + j as u32 % 50 };
                    conn.push_whatsat(format_args!("{client}"), radius, 5);
                }
            };
            // An answer whose JSON is a places error is an error, and counted apart.
            let mut places_errors = 0;
            let counts = |answer: Answer| {
                let places_error = answer.kind == Kind::At && answer.places_error;
                places_errors += u64::from(places_error);
                answer.kind == Kind::At && !places_error
            };
            let outcome = closed_loop(
                conn,
                pipeline,
                Framing::Whatsat,
                deadline,
                done,
                fill,
                counts,
            );
            (outcome.await, places_errors)
        }
    });
    let outcomes = join_all(loops).await;
    let elapsed = start.elapsed();
    let places_calls = places.requests() - calls_before;
    ticker.finish();

    let mut total = Recorder::default();
    let mut places_errors = 0;
    let mut first_error = None;
    for (outcome, errors) in outcomes {
        total.merge(&outcome.recorder)?;
        places_errors += errors;
        first_error = first_error.or_else(|| outcome.first_error());
    }
    let herd = total.load(elapsed);
    let asked = herd.count + herd.errors;
    let calls_per_whatsat = if asked > 0 {
        round3(places_calls as f64 / asked as f64)
    } else {
        0.0
    };
    if calls_per_whatsat < 0.9 {
        report::note(format_args!(
            "note: only {calls_per_whatsat} places calls per WHATSAT: the server reuses answers; {hint}"
        ));
    }
    let signed = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
    let report = WhatsatReport {
        bench: "whatsat",
        addr: args.addr.clone(),
        places_url: places.url(),
        conns: args.conns,
        pipeline: args.pipeline,
        duration_s: round3(args.duration.as_secs_f64()),
        added_us: Added {
            p50: signed(herd.latency_us.p50) - signed(direct.latency_us.p50),
            p99: signed(herd.latency_us.p99) - signed(direct.latency_us.p99),
        },
        direct,
        herd,
        places_errors,
        places_calls,
        calls_per_whatsat,
        first_error,
    };
    report::emit(args.output.json, &report, || {
        format!(
            "whatsat {} (places {}): {} connections, pipeline {}, {:.1} s each\n{}  \
             added by the herd: p50 {:+} us, p99 {:+} us; places calls per WHATSAT {}{}\n",
            report.addr,
            report.places_url,
            report.conns,
            report.pipeline,
            report.duration_s,
            report::load_table(&[("direct GET", &report.direct), ("WHATSAT", &report.herd)]),
            report.added_us.p50,
            report.added_us.p99,
            report.calls_per_whatsat,
            report
                .first_error
                .as_ref()
                .map(|e| format!("\n  first error: {e}"))
                .unwrap_or_default()
        )
    })
}

/// Connection `k`'s client position: each its own, so searches never share a call.
fn position(k: u32) -> String {
    format!(
        "{:+.6}{:+.6}",
        34.068930 + f64::from(k % 10_000) * 0.001,
        -118.445127 + f64::from(k / 10_000) * 0.001
    )
}

/// One WHATSAT, to check that the herd server calls the tool's places server.
async fn check_calls(
    conn: &mut Conn,
    places: &PlacesResponder,
    tag: &str,
    hint: &str,
) -> anyhow::Result<()> {
    let before = places.requests();
    conn.push_whatsat(format_args!("w{tag}-0"), 10, 5);
    let mut answer = None;
    conn.exchange(1, Framing::Whatsat, |a| answer = Some(a))
        .await
        .context("the first WHATSAT failed")?;
    match answer {
        Some(a) if a.kind == Kind::At && !a.places_error && places.requests() > before => Ok(()),
        Some(a) if a.kind != Kind::At => bail!(
            "the server answered the first WHATSAT with {:?}",
            conn.first_odd().unwrap_or_default()
        ),
        _ => bail!(
            "the server did not call the places server at {}: {hint}",
            places.url()
        ),
    }
}

/// The baseline: GETs straight to the places server, `conns` closed loops.
async fn direct_load(
    places: SocketAddr,
    conns: u32,
    duration: Duration,
    done: &AtomicU64,
) -> anyhow::Result<Load> {
    let target = format!("{PLACES_PATH}?location=34.068930,-118.445127&radius=10000&key=bench");
    let mut clients = Vec::with_capacity(conns as usize);
    for _ in 0..conns {
        clients.push(
            HttpClient::connect(places, &target)
                .await
                .context("cannot connect to the places server")?,
        );
    }
    let start = Instant::now();
    let deadline = start + duration;
    let loops = clients.into_iter().map(|mut client| async move {
        let mut recorder = Recorder::default();
        while Instant::now() < deadline {
            let sent = Instant::now();
            match client.get().await {
                Ok(200) => recorder.record(sent.elapsed()),
                Ok(_) => recorder.error(),
                Err(_) => {
                    recorder.error();
                    break;
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
        recorder
    });
    let recorders = join_all(loops).await;
    let elapsed = start.elapsed();
    let mut total = Recorder::default();
    for recorder in &recorders {
        total.merge(recorder)?;
    }
    Ok(total.load(elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_differ_and_are_iso_6709() {
        assert_eq!(position(0), "+34.068930-118.445127");
        assert_eq!(position(1), "+34.069930-118.445127");
        assert_ne!(position(10_000), position(0));
    }

    #[test]
    fn the_places_answer_is_the_legacy_fixture() {
        let json: serde_json::Value = serde_json::from_str(PLACES_ANSWER).expect("JSON");
        assert_eq!(json["status"], "OK");
    }
}
