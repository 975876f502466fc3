//! Watching a server as one of its neighbors: the tool listens where the server's config
//! says a neighbor is, accepts the herd link the server dials, and notes when each record
//! of a run arrives on it. Exact, and cheap for the herd (one more link), where polling
//! with WHATSAT is neither (see [`super::flood`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How often [`NeighborWatch::wait_all`] looks at the count (the arrival times themselves
/// are taken as the records come).
const WAIT_STEP: Duration = Duration::from_millis(1);

/// A link that carried nothing for this long has sent its snapshot (every record the
/// server held when it dialled), so a run can start without sharing the server with it.
const QUIET: Duration = Duration::from_millis(50);

/// A herd link accepted from the watched server, and what came on it.
pub struct NeighborWatch {
    seen: Arc<Seen>,
    reader: JoinHandle<()>,
}

/// What the reader task shares.
struct Seen {
    /// When each record of the run first arrived, by index.
    arrived: Mutex<Vec<Option<Instant>>>,
    /// How many of them have.
    known: Arc<AtomicU64>,
    /// Lines of any kind, to tell when the snapshot is over.
    lines: AtomicU64,
}

impl NeighborWatch {
    /// Listens on `listen`, accepts the link the watched server dials within `timeout`
    /// (it redials at most a second apart), reads its hello and lets its snapshot pass;
    /// from then on notes the first arrival of a record for each client `<prefix>-<i>`
    /// with `i < count`.
    pub async fn accept(
        listen: &str,
        prefix: &str,
        count: u64,
        timeout: Duration,
    ) -> anyhow::Result<NeighborWatch> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let Ok(accepted) = tokio::time::timeout(timeout, listener.accept()).await else {
            bail!(
                "no server dialled {listen} within {timeout:?}: is a neighbor at this \
                 address in the watched server's config?"
            );
        };
        let (stream, _) = accepted.with_context(|| format!("accept on {listen}"))?;
        let mut link = BufReader::new(stream);
        let mut hello = String::new();
        tokio::time::timeout(timeout, link.read_line(&mut hello))
            .await
            .context("the server that dialled said nothing")?
            .context("reading the hello")?;
        if !hello.starts_with("PEER ") {
            bail!("{listen}: expected a PEER hello, got {hello:?}");
        }
        let seen = Arc::new(Seen {
            arrived: Mutex::new(vec![None; count as usize]),
            known: Arc::new(AtomicU64::new(0)),
            lines: AtomicU64::new(0),
        });
        let reader = tokio::spawn(note_arrivals(link, format!("{prefix}-"), Arc::clone(&seen)));
        let give_up = Instant::now() + timeout;
        loop {
            let before = seen.lines.load(Ordering::Relaxed);
            tokio::time::sleep(QUIET).await;
            if seen.lines.load(Ordering::Relaxed) == before || Instant::now() > give_up {
                break;
            }
        }
        Ok(NeighborWatch { seen, reader })
    }

    /// How many of the run's records have arrived, shared for a progress bar.
    pub fn known(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.seen.known)
    }

    /// Waits until every record has arrived, the link closed, or `deadline`.
    pub async fn wait_all(&self, deadline: Instant) {
        let count = self.seen.arrived.lock().map_or(0, |a| a.len()) as u64;
        while self.seen.known.load(Ordering::Relaxed) < count
            && Instant::now() < deadline
            && !self.reader.is_finished()
        {
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// When each record arrived, by its index; `None` for those that did not.
    pub fn arrivals(&self) -> Vec<Option<Instant>> {
        self.seen
            .arrived
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

impl Drop for NeighborWatch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn note_arrivals(mut link: BufReader<TcpStream>, prefix: String, seen: Arc<Seen>) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match link.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = Instant::now();
        seen.lines.fetch_add(1, Ordering::Relaxed);
        // `AT <server> <diff> <client> ...`
        let Some(client) = line.split(|&b| b == b' ').nth(3) else {
            continue;
        };
        let index = client
            .strip_prefix(prefix.as_bytes())
            .and_then(|i| std::str::from_utf8(i).ok())
            .and_then(|i| i.parse::<usize>().ok());
        if let (Some(i), Ok(mut arrived)) = (index, seen.arrived.lock())
            && let Some(slot @ None) = arrived.get_mut(i)
        {
            *slot = Some(at);
            seen.known.fetch_add(1, Ordering::Relaxed);
        }
    }
}
