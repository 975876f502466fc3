//! A burst of IAMATs for distinct clients (`<prefix>-<i>` for i in 0..count), pipelined in
//! batches over a few connections, as fast as the server acknowledges them. Used by `flood`
//! (the burst whose spread is timed) and `records` (the records whose memory is weighed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::future::join_all;

use super::Stamp;
use super::conn::{Conn, Framing, Kind, POSITION};

/// What to send.
#[derive(Debug, Clone)]
pub struct Burst<'a> {
    /// The server's client address.
    pub addr: &'a str,
    /// Client ids are `<prefix>-<i>`.
    pub prefix: &'a str,
    /// How many IAMATs (and clients).
    pub count: u64,
    /// Connections to share them.
    pub conns: usize,
    /// IAMATs per write.
    pub batch: usize,
}

/// How a burst went.
#[derive(Debug, Clone)]
pub struct Sent {
    /// When the first write went out (after the connections were made), the instant a
    /// burst's spread is timed from.
    pub started: Instant,
    /// IAMATs answered with an AT line.
    pub acked: u64,
    /// IAMATs answered otherwise, or not at all.
    pub errors: u64,
    /// From the first write to the last answer.
    pub elapsed: Duration,
    /// Why a connection failed, if one did.
    pub failure: Option<String>,
    /// The first answer that was not an AT line, if any.
    pub first_odd: Option<String>,
}

impl Sent {
    /// Nothing sent yet, the first write at `started`.
    fn new(started: Instant) -> Self {
        Sent {
            started,
            acked: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            failure: None,
            first_odd: None,
        }
    }
}

/// Sends the burst; `done` counts the answers as they come (for a progress bar).
pub async fn send(burst: &Burst<'_>, done: &AtomicU64) -> anyhow::Result<Sent> {
    let conns = burst.conns.max(1);
    let mut connected = Vec::with_capacity(conns);
    for _ in 0..conns {
        connected.push(
            Conn::connect(burst.addr)
                .await
                .with_context(|| format!("cannot connect to {}", burst.addr))?,
        );
    }
    let start = Instant::now();
    let shares = connected.into_iter().enumerate().map(|(k, conn)| {
        let from = burst.count * k as u64 / conns as u64;
        let to = burst.count * (k as u64 + 1) / conns as u64;
        send_share(conn, burst, from..to, start, done)
    });
    let mut total = Sent::new(start);
    for share in join_all(shares).await {
        total.acked += share.acked;
        total.errors += share.errors;
        total.failure = total.failure.or(share.failure);
        total.first_odd = total.first_odd.or(share.first_odd);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Sends clients `range` on one connection.
async fn send_share(
    mut conn: Conn,
    burst: &Burst<'_>,
    range: std::ops::Range<u64>,
    started: Instant,
    done: &AtomicU64,
) -> Sent {
    let mut sent = Sent::new(started);
    let batch = burst.batch.max(1) as u64;
    let mut next = range.start;
    while next < range.end {
        let end = (next + batch).min(range.end);
        let stamp = Stamp::now();
        for i in next..end {
            conn.push_iamat(format_args!("{}-{i}", burst.prefix), POSITION, stamp);
        }
        let n = end - next;
        let mut answered = 0;
        let result = conn
            .exchange(n as usize, Framing::Line, |answer| {
                answered += 1;
                if answer.kind == Kind::At {
                    sent.acked += 1;
                } else {
                    sent.errors += 1;
                }
            })
            .await;
        done.fetch_add(answered, Ordering::Relaxed);
        if let Err(e) = result {
            sent.errors += range.end - next - answered;
            sent.failure = Some(e.to_string());
            break;
        }
        next = end;
    }
    sent.first_odd = conn.first_odd().map(str::to_owned);
    sent
}
