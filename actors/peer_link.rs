//! The `PeerLink` actor: this server's outgoing link to one neighbor (docs/PROTOCOL.md,
//! the herd protocol).
//!
//! It dials the neighbor, says `PEER <me>`, sends every record the store holds, then every
//! record stored from then on (except those that came from that neighbor). It notices a
//! dropped link by itself (its reader sees end-of-file or an error), and redials with capped
//! exponential backoff and jitter, reset once connected. Nothing is queued while the link
//! is down: every (re)connection starts with the whole snapshot, which covers all that was
//! missed. Records handed to a link are written to its socket before the link answers
//! for them, which is what the store waits for before it answers a client (flood before
//! reply). While it is up, what the socket has not taken yet is bounded by
//! [`MAX_LINK_QUEUE_BYTES`]; past it the link drops its queue and the connection, and
//! resends everything on the next one, so a slow or dead neighbor never holds memory or a
//! client.
//!
//! An accepted link gets no answer. A neighbor that answers `? PEER <me>` refused the
//! hello: the link is dropped and dialled again after the longest delay, instead of
//! streaming every record to a server that refuses each one. Any other answer is the
//! neighbor refusing one record (one it finds invalid, say): logged, once per connection,
//! and the link goes on, as dropping it would resend the whole store only to be refused
//! again.
//!
//! Like a client's, the link's connection has a number in the server's log, which holds
//! every line sent on it (the hello, the snapshot, the records) and the neighbor's
//! answer. The snapshot is streamed no faster than the log writes it out, so that a large
//! store sent on reconnection is logged whole instead of overflowing the log's buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsConnector, TlsStream};

use super::location_store::{Snapshot, Stored};
use crate::backoff::Backoff;
use crate::line::LineSplitter;
use crate::metrics::{LinkMetrics, Metrics};
use crate::protocol::Record;
use crate::server_log::{NoteKind, ServerLog};
use crate::socket_out::{Flushed, SocketOut, Waiting, WriteLoop};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::tls::{self, CurrentTls};

/// The log target of this actor's mailbox: `RUST_LOG=herd::peer_link=debug`.
pub const LOG_TARGET: &str = "herd::peer_link";

/// The first delay before redialling a neighbor that is down.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// The longest delay between two dials of a neighbor that stays down.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How long a dial may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a link must have been down before the outage is said at the default log level
/// (a warning), and its end too (a notice).
pub const OUTAGE_GRACE: Duration = Duration::from_secs(2);

/// Bytes of records the neighbor's socket has not taken, past which the link drops them
/// and its connection, and resends everything on the next connection.
pub const MAX_LINK_QUEUE_BYTES: usize = 4 << 20;

/// The snapshot is moved into the output this many bytes at a time, as the socket takes
/// them, so that a large store is streamed rather than copied whole.
const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

/// How long the snapshot waits for a log that is behind before looking again.
const LOG_WAIT: Duration = Duration::from_millis(1);

/// The longest line from the neighbor logged whole. It answers only what it refuses (the
/// hello, or a record: `? ` and the line); a longer answer is logged cut to this, which
/// still names the record.
const NEIGHBOR_LINE_BYTES: usize = 4096;

/// The outgoing link to one neighbor.
pub struct PeerLink {
    /// This server's name, said in the hello.
    me: Arc<str>,
    /// The neighbor's name: records that came from it are not sent back.
    neighbor: Arc<str>,
    /// Where the neighbor accepts herd links.
    addr: SocketAddr,
    /// With `[tls]`: the settings in force, for each dial. The neighbor's certificate must
    /// name the neighbor.
    tls: Option<CurrentTls>,
    /// The store, asked for every record on each connection.
    snapshot: Recipient<Snapshot>,
    /// The server's log: the link's lines and its opened/dropped notes.
    log: ServerLog,
    /// How long to wait before the next dial of a neighbor that is down.
    backoff: Backoff,
    /// The connection, while the link is up.
    connection: Option<Connection>,
    /// Counts connection attempts, so that news about an old connection is ignored.
    generation: u64,
    /// Whether the link was ever up (to log "re-established" rather than "opened").
    was_up: bool,
    /// Since when the link has been down (unset while it is up).
    down_since: Option<Instant>,
    /// Whether this outage was said at the default log level.
    outage_said: bool,
    /// What the server counts about this link, if it counts.
    counts: Option<Arc<LinkMetrics>>,
}

/// One connection to the neighbor.
struct Connection {
    /// The connection's number in the log.
    conn: u64,
    /// The bytes due to the neighbor, and the socket they go to.
    out: SocketOut<WriteHalf>,
    /// Snapshot records not yet moved into `out`.
    backlog: std::vec::IntoIter<Arc<str>>,
    /// The loop that flushes again as a full socket takes more, while it is full. It is
    /// cancelled with the connection, and the socket with it: otherwise a neighbor that
    /// stopped reading would keep a dropped connection (and its full socket buffer) open
    /// forever.
    writing: Option<SpawnHandle>,
    /// The timer after which the snapshot looks again whether the log has caught up.
    waiting_log: Option<SpawnHandle>,
    /// The task that watches the neighbor's side for end-of-file.
    reader: JoinHandle<()>,
}

impl PeerLink {
    /// A link from server `me` to `neighbor` at `addr`, over TLS with `tls`; it dials once
    /// started.
    pub fn new(
        me: Arc<str>,
        neighbor: Arc<str>,
        addr: SocketAddr,
        tls: Option<CurrentTls>,
        snapshot: Recipient<Snapshot>,
        log: ServerLog,
    ) -> PeerLink {
        PeerLink {
            me,
            neighbor,
            addr,
            tls,
            snapshot,
            log,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            connection: None,
            generation: 0,
            was_up: false,
            down_since: None,
            outage_said: false,
            counts: None,
        }
    }

    /// Counts into `metrics` (the server's); without it, the link counts nothing.
    pub fn with_metrics(mut self, metrics: &Metrics) -> PeerLink {
        self.counts = metrics.link(&self.neighbor).cloned();
        self
    }

    fn dial(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let (addr, neighbor) = (self.addr, Arc::clone(&self.neighbor));
        let tls = self.tls.as_ref().map(CurrentTls::get);
        let connect = async move {
            let stream = TcpStream::connect(addr).await?;
            // Records are written whole, many at a time; Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            let Some(tls) = tls else {
                return Ok(Stream::Tcp(stream));
            };
            let connector = TlsConnector::from(Arc::clone(&tls.dialling));
            let stream = connector
                .connect(tls::server_name(&neighbor)?, stream)
                .await?;
            Ok::<_, std::io::Error>(Stream::Tls(Box::new(TlsStream::Client(stream))))
        };
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, connect);
        ctx.spawn(connect.into_actor(self).map(move |result, act, ctx| {
            if act.generation != generation {
                return;
            }
            match result {
                Ok(Ok(stream)) => act.up(stream, ctx),
                Ok(Err(e)) => act.retry(&e.to_string(), ctx),
                Err(_) => act.retry("dial timed out", ctx),
            }
        }));
    }

    fn retry(&mut self, why: &str, ctx: &mut Context<Self>) {
        let delay = self.backoff.next_delay();
        debug!(
            target: LOG_TARGET,
            "link to {} at {}: {why}; dialling again in {} ms",
            self.neighbor,
            self.addr,
            delay.as_millis()
        );
        if let Some(link) = &self.counts {
            link.went_down(why);
        }
        // Said once per outage, and only once it has lasted: a neighbor that restarts, or
        // one started a moment later, is no news.
        let outage = self.down_since.get_or_insert_with(Instant::now);
        if !self.outage_said && outage.elapsed() >= OUTAGE_GRACE {
            self.outage_said = true;
            warn!(
                target: LOG_TARGET,
                "{}: link to {} at {} is down ({why}); dialling it again until it is back",
                self.me, self.neighbor, self.addr
            );
        }
        ctx.run_later(delay, |act, ctx| act.dial(ctx));
    }

    fn up(&mut self, stream: Stream, ctx: &mut Context<Self>) {
        let (read_half, write_half) = stream.into_split();
        let generation = self.generation;
        let conn = self.log.next_conn();
        let state = if self.was_up {
            "re-established"
        } else {
            "opened"
        };
        self.was_up = true;
        self.backoff.reset();
        if let Some(link) = &self.counts {
            link.went_up();
        }
        if let Some(outage) = self.down_since.take()
            && std::mem::take(&mut self.outage_said)
        {
            info!(
                target: LOG_TARGET,
                "{}: link to {} at {} is back, after {} s down",
                self.me,
                self.neighbor,
                self.addr,
                outage.elapsed().as_secs()
            );
        }
        self.log.note(
            Some(conn),
            format!("link to {} at {} {state}", self.neighbor, self.addr),
        );
        debug!(target: LOG_TARGET, "link to {} {state}", self.neighbor);
        let reader = actix_rt::spawn(watch_neighbor(
            read_half,
            ctx.address(),
            generation,
            self.log.clone(),
            conn,
            Arc::clone(&self.neighbor),
            Arc::clone(&self.me),
        ));
        let hello = format!("PEER {}\n", self.me);
        self.log
            .lines_out(conn, SystemTime::now(), hello.as_bytes());
        let mut out = SocketOut::new(write_half);
        out.buffer().extend_from_slice(hello.as_bytes());
        self.connection = Some(Connection {
            conn,
            out,
            backlog: Vec::new().into_iter(),
            writing: None,
            waiting_log: None,
            reader,
        });
        // Everything held goes first (records stored meanwhile are sent as they come;
        // a record sent twice is dropped by the neighbor as not newer).
        let snapshot = self.snapshot.send(Snapshot);
        ctx.spawn(snapshot.into_actor(self).map(move |lines, act, ctx| {
            if act.generation != generation {
                return;
            }
            if let (Ok(lines), Some(c)) = (lines, act.connection.as_mut()) {
                debug!(target: LOG_TARGET, "link to {}: snapshot of {} records", act.neighbor, lines.len());
                c.backlog = lines.into_iter();
                act.flush(ctx);
            }
        }));
        self.flush(ctx);
    }

    /// Hands the socket what it takes now, refilling from the snapshot as it goes.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = self.connection.as_mut() else {
            return;
        };
        loop {
            let refill = c.out.len() < SNAPSHOT_CHUNK_BYTES && c.backlog.len() > 0;
            if refill && c.waiting_log.is_none() {
                if self.log.is_behind() {
                    // The snapshot waits for the log rather than make it drop lines.
                    let generation = self.generation;
                    c.waiting_log = Some(ctx.run_later(LOG_WAIT, move |act, ctx| {
                        if act.generation != generation {
                            return;
                        }
                        if let Some(c) = act.connection.as_mut() {
                            c.waiting_log = None;
                        }
                        act.flush(ctx);
                    }));
                } else {
                    let out = c.out.buffer();
                    let start = out.len();
                    let mut records = 0;
                    while out.len() < SNAPSHOT_CHUNK_BYTES {
                        let Some(line) = c.backlog.next() else { break };
                        out.extend_from_slice(line.as_bytes());
                        out.extend_from_slice(b"\n");
                        records += 1;
                    }
                    if let Some(link) = &self.counts {
                        link.records_sent.inc_by(records);
                        link.bytes_sent.inc_by((out.len() - start) as u64);
                    }
                    self.log.lines_out(c.conn, SystemTime::now(), &out[start..]);
                }
            }
            if c.out.is_empty() {
                return;
            }
            let flushed = c.out.flush();
            if let Some(link) = &self.counts {
                link.bytes_queued.set(c.out.len() as i64);
            }
            match flushed {
                // Taken: refill from the snapshot, if any is left.
                Ok(Flushed::All) => {}
                Ok(Flushed::Blocked) => {
                    if c.writing.is_none() {
                        let writing = WriteLoop::new(|act: &mut PeerLink, ctx, waker| {
                            let Some(c) = act.connection.as_mut() else {
                                return Waiting::No;
                            };
                            c.out.woken(waker);
                            act.flush(ctx);
                            match act.connection.as_mut() {
                                Some(c) if c.out.is_blocked() => Waiting::Yes,
                                Some(c) => {
                                    c.writing = None;
                                    Waiting::No
                                }
                                None => Waiting::No,
                            }
                        });
                        c.writing = Some(ctx.spawn(writing));
                    }
                    return;
                }
                Err(e) => return self.down(&format!("write failed: {e}"), ctx),
            }
        }
    }

    /// The connection is gone (or given up): forget it and dial again after a delay.
    fn down(&mut self, why: &str, ctx: &mut Context<Self>) {
        if let Some(c) = self.connection.take() {
            c.reader.abort();
            if let Some(writing) = c.writing {
                ctx.cancel_future(writing);
            }
            if let Some(waiting) = c.waiting_log {
                ctx.cancel_future(waiting);
            }
            self.log.note_as(
                NoteKind::Failure,
                Some(c.conn),
                format!("link to {} at {} dropped: {why}", self.neighbor, self.addr),
            );
            debug!(target: LOG_TARGET, "link to {} dropped: {why}", self.neighbor);
        }
        // News about the old connection must not touch the next one.
        self.generation += 1;
        self.retry(why, ctx);
    }
}

impl Actor for PeerLink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Unbounded, like the store's: the store sends here once per round of the event
        // loop (per run of records from one source), and what is queued for the neighbor
        // is bounded by `MAX_LINK_QUEUE_BYTES`.
        ctx.set_mailbox_capacity(0);
        self.dial(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(c) = self.connection.take() {
            c.reader.abort();
        }
    }
}

impl Handler<Stored> for PeerLink {
    type Result = ();

    fn handle(&mut self, Stored { records, from }: Stored, ctx: &mut Context<Self>) {
        if let Some(link) = &self.counts {
            link.backlog.dec();
        }
        // The store leaves these out already (`Subscribe::neighbor`); a link checks too,
        // as it must never send a neighbor its own records back.
        if from.as_deref() == Some(&*self.neighbor) {
            return;
        }
        let Some(c) = self.connection.as_mut() else {
            // Down: the snapshot sent on the next connection carries these records.
            return;
        };
        let out = c.out.buffer();
        let start = out.len();
        for record in records.iter() {
            debug!(target: LOG_TARGET, "to {}: {}", self.neighbor, record.line());
            out.extend_from_slice(record.line().as_bytes());
            out.extend_from_slice(b"\n");
        }
        if let Some(link) = &self.counts {
            link.records_sent.inc_by(records.len() as u64);
            link.bytes_sent.inc_by((out.len() - start) as u64);
        }
        let lines = records.iter().map(Record::line);
        self.log.each_line_out(c.conn, SystemTime::now(), lines);
        // Handed to the socket before this handler returns, so before its answer reaches
        // the store: the store answers a client only once every link answered, and so
        // the record is in every socket that takes it before the client's AT line is
        // (flood before reply). A full socket keeps it first in line here.
        self.flush(ctx);
        // What the socket would not take is bounded.
        let Some(c) = self.connection.as_ref() else {
            return;
        };
        if c.out.len() > MAX_LINK_QUEUE_BYTES {
            let why = format!(
                "{} bytes queued, over the {MAX_LINK_QUEUE_BYTES}-byte limit; \
                 the queue is dropped and everything is resent on the next connection",
                c.out.len()
            );
            if let Some(link) = &self.counts {
                link.queue_drops.inc();
            }
            self.down(&why, ctx);
        }
    }
}

/// The neighbor closed the link, reading from it failed, or it refused the link.
#[derive(Message, Debug)]
#[rtype(result = "()")]
struct NeighborClosed {
    generation: u64,
    why: String,
    /// The neighbor answered (it refused the hello): dialling again soon would only be
    /// refused again, so the next dial waits the longest delay.
    refused: bool,
}

impl Handler<NeighborClosed> for PeerLink {
    type Result = ();

    fn handle(&mut self, msg: NeighborClosed, ctx: &mut Context<Self>) {
        if msg.generation == self.generation {
            if msg.refused {
                self.backoff.to_longest();
            }
            self.down(&msg.why, ctx);
        }
    }
}

/// Closes the link for good (the server is stopping).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Close;

impl Handler<Close> for PeerLink {
    type Result = ();

    fn handle(&mut self, _: Close, ctx: &mut Context<Self>) {
        debug!(target: LOG_TARGET, "link to {}: Close", self.neighbor);
        ctx.stop();
    }
}

/// Reads the neighbor's side of the link (connection `conn` in the log), which carries
/// nothing in normal operation, to notice at once when it closes. A neighbor that refuses
/// the hello (`? PEER <me>`) ends the link; any other answer refuses one record, and is
/// said once per connection (every line is in the server's log).
async fn watch_neighbor(
    mut half: ReadHalf,
    link: Addr<PeerLink>,
    generation: u64,
    log: ServerLog,
    conn: u64,
    neighbor: Arc<str>,
    me: Arc<str>,
) {
    let refusal = format!("? PEER {me}");
    let mut buffer = [0u8; 512];
    let mut lines = LineSplitter::new(NEIGHBOR_LINE_BYTES);
    let mut disagreed = false;
    // A link carries records one way: whatever the neighbor says on it is a refusal, which
    // the log keeps at `errors` too.
    let log_line = |line: &[u8]| {
        let now = SystemTime::now();
        log.line_in(conn, now, line);
        log.invalid_in(conn, now, line);
    };
    let (why, refused) = loop {
        match half.read(&mut buffer).await {
            Ok(0) => {
                lines.finish(|line| log_line(line.bytes()));
                break ("the neighbor closed the link".to_owned(), false);
            }
            Ok(n) => {
                let mut refused = false;
                lines.push(&buffer[..n], |line| {
                    let said = line.bytes();
                    log_line(said);
                    if said == refusal.as_bytes() {
                        refused = true;
                    } else if !std::mem::replace(&mut disagreed, true) {
                        let said = String::from_utf8_lossy(said);
                        let note = format!(
                            "{neighbor} refused a record, answering {said:?}; the link goes \
                             on (further answers on this connection are in the log only)"
                        );
                        warn!(target: LOG_TARGET, "{me}: {note}");
                        log.note_as(NoteKind::Failure, Some(conn), note);
                    }
                });
                if refused {
                    let why = format!(
                        "{neighbor} refused it, answering {refusal:?} (do the two configs agree?)"
                    );
                    break (why, true);
                }
            }
            Err(e) => break (format!("read failed: {e}"), false),
        }
    };
    link.do_send(NeighborClosed {
        generation,
        why,
        refused,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;
    use std::sync::Mutex;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    /// A store whose snapshot is whatever the test put in it.
    struct FakeStore(Arc<Mutex<Vec<String>>>);
    impl Actor for FakeStore {
        type Context = Context<Self>;
    }
    impl Handler<Snapshot> for FakeStore {
        type Result = MessageResult<Snapshot>;
        fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
            let lines = self.0.lock().unwrap();
            MessageResult(lines.iter().map(|l| Arc::from(l.as_str())).collect())
        }
    }

    fn record(client: &str, time: u32) -> Record {
        let line = format!("AT Clark +0.000000000 {client} +1+1 {time}");
        match Command::parse(line.as_bytes()) {
            Command::At(r) => r,
            _ => panic!("{line}"),
        }
    }

    fn stored(client: &str, time: u32, from: Option<&str>) -> Stored {
        Stored {
            records: Arc::new([record(client, time)]),
            from: from.map(Arc::from),
        }
    }

    async fn link_to(
        addr: SocketAddr,
        snapshot: &[&str],
    ) -> (Addr<PeerLink>, Arc<Mutex<Vec<String>>>) {
        link_logging_to(addr, snapshot, ServerLog::discard()).await
    }

    async fn link_logging_to(
        addr: SocketAddr,
        snapshot: &[&str],
        log: ServerLog,
    ) -> (Addr<PeerLink>, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(snapshot.iter().map(|s| s.to_string()).collect()));
        let store = FakeStore(Arc::clone(&lines)).start();
        let link = PeerLink::new(
            Arc::from("Clark"),
            Arc::from("Bona"),
            addr,
            None,
            store.recipient(),
            log,
        )
        .start();
        (link, lines)
    }

    /// Accepts the link's next connection, within ten seconds.
    async fn accept(listener: &TcpListener) -> BufReader<TcpStream> {
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept());
        BufReader::new(accepted.await.expect("the link did not dial").unwrap().0)
    }

    async fn read_line(reader: &mut BufReader<TcpStream>) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .expect("nothing came on the link")
            .unwrap();
        line
    }

    #[actix_rt::test]
    async fn says_hello_sends_the_snapshot_then_live_records_but_not_the_neighbors_own() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let snapshot = "AT Clark +0.000000000 old +1+1 1";
        let (link, _) = link_to(listener.local_addr().unwrap(), &[snapshot]).await;
        let mut bona = accept(&listener).await;
        assert_eq!(read_line(&mut bona).await, "PEER Clark\n");
        assert_eq!(read_line(&mut bona).await, format!("{snapshot}\n"));
        link.send(stored("back", 2, Some("Bona"))).await.unwrap();
        link.send(stored("new", 3, Some("Jaquez"))).await.unwrap();
        link.send(stored("mine", 4, None)).await.unwrap();
        assert_eq!(
            read_line(&mut bona).await,
            "AT Clark +0.000000000 new +1+1 3\n"
        );
        assert_eq!(
            read_line(&mut bona).await,
            "AT Clark +0.000000000 mine +1+1 4\n"
        );
    }

    #[actix_rt::test]
    async fn records_are_in_the_socket_by_the_time_the_link_answers_for_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (link, _) = link_to(listener.local_addr().unwrap(), &[]).await;
        let mut bona = accept(&listener).await;
        assert_eq!(read_line(&mut bona).await, "PEER Clark\n");
        // Several in one turn, as the store hands them over; the link writes them once.
        let taken = (1..=3).map(|time| link.send(stored("now", time, None)));
        futures_util::future::join_all(taken).await;
        // Read without waiting: what the client's answer may follow must be sent already.
        let mut bona = bona.into_inner().into_std().unwrap();
        let mut buffer = [0u8; 1024];
        let n = std::io::Read::read(&mut bona, &mut buffer).expect("nothing was written yet");
        assert_eq!(
            String::from_utf8_lossy(&buffer[..n]),
            "AT Clark +0.000000000 now +1+1 1\nAT Clark +0.000000000 now +1+1 2\n\
             AT Clark +0.000000000 now +1+1 3\n"
        );
    }

    #[actix_rt::test]
    async fn a_snapshot_is_sent_no_faster_than_the_log_writes_it_and_is_logged_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // About 1.2 MB of snapshot, several times what the log takes in one turn.
        let count = 20_000;
        let snapshot: Vec<String> = (0..count)
            .map(|i| format!("AT Clark +0.000000000 held-{i:05} +1+1 {i}"))
            .collect();
        let snapshot: Vec<&str> = snapshot.iter().map(String::as_str).collect();
        let (log, held) = ServerLog::held();
        let (_link, _) = link_logging_to(listener.local_addr().unwrap(), &snapshot, log).await;
        let mut bona = accept(&listener).await;
        assert_eq!(read_line(&mut bona).await, "PEER Clark\n");
        // Nothing writes the log out: the link stops once the log is behind.
        let mut received = 0;
        let mut logged = String::new();
        loop {
            let mut line = String::new();
            let next = tokio::time::timeout(Duration::from_millis(300), bona.read_line(&mut line));
            match next.await {
                Ok(n) => {
                    assert!(n.unwrap() > 0, "the link closed");
                    received += 1;
                }
                Err(_) => break,
            }
        }
        assert!(
            received < count,
            "the whole snapshot went while the log was behind"
        );
        // As the log is written out, the rest follows.
        while received < count {
            logged.push_str(&held.take());
            let mut line = String::new();
            let next = tokio::time::timeout(Duration::from_secs(10), bona.read_line(&mut line));
            assert!(next.await.expect("the snapshot stalled").unwrap() > 0);
            received += 1;
        }
        logged.push_str(&held.take());
        let out: Vec<&str> = logged
            .lines()
            .filter_map(|l| l.split_once(" conn 1 > ").map(|(_, line)| line))
            .collect();
        assert_eq!(out.len(), count + 1, "hello and every record, once each");
        assert_eq!(out[0], "PEER Clark");
        assert_eq!(out[1..], snapshot[..]);
    }

    #[actix_rt::test]
    async fn at_errors_the_log_keeps_the_links_events_and_refusals_not_its_records() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let snapshot = "AT Clark +0.000000000 old +1+1 1";
        let (log, held) = ServerLog::held_at(crate::server_log::LogLines::Errors);
        let (link, _) = link_logging_to(addr, &[snapshot], log).await;
        let mut bona = accept(&listener).await;
        assert_eq!(read_line(&mut bona).await, "PEER Clark\n");
        assert_eq!(read_line(&mut bona).await, format!("{snapshot}\n"));
        link.send(stored("new", 3, None)).await.unwrap();
        read_line(&mut bona).await;
        // Bona refuses the record, then closes: the link dials again.
        let refusal = "? AT Clark +0.000000000 new +1+1 3";
        let mut bona = bona.into_inner();
        tokio::io::AsyncWriteExt::write_all(&mut bona, format!("{refusal}\n").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(bona);
        let mut again = accept(&listener).await;
        assert_eq!(read_line(&mut again).await, "PEER Clark\n");
        let text = held.take();
        let lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            lines,
            [
                format!("conn 1 - link to Bona at {addr} opened"),
                format!("conn 1 < {refusal}"),
                format!(
                    "conn 1 - Bona refused a record, answering {refusal:?}; the link goes on \
                     (further answers on this connection are in the log only)"
                ),
                format!("conn 1 - link to Bona at {addr} dropped: the neighbor closed the link"),
                format!("conn 2 - link to Bona at {addr} re-established"),
            ]
        );
    }

    #[actix_rt::test]
    async fn redials_when_the_neighbor_closes_and_resends_everything() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (link, snapshot) = link_to(listener.local_addr().unwrap(), &[]).await;
        let mut first = accept(&listener).await;
        assert_eq!(read_line(&mut first).await, "PEER Clark\n");
        drop(first);
        // What the store holds by the next connection is what the neighbor gets.
        snapshot
            .lock()
            .unwrap()
            .push("AT Clark +0.000000000 missed +1+1 5".into());
        let mut second = accept(&listener).await;
        assert_eq!(read_line(&mut second).await, "PEER Clark\n");
        assert_eq!(
            read_line(&mut second).await,
            "AT Clark +0.000000000 missed +1+1 5\n"
        );
        link.send(stored("live", 6, None)).await.unwrap();
        assert_eq!(
            read_line(&mut second).await,
            "AT Clark +0.000000000 live +1+1 6\n"
        );
    }

    #[actix_rt::test]
    async fn keeps_dialling_a_neighbor_that_is_down_until_it_returns() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let (_link, _) = link_to(addr, &[]).await;
        // Several dials fail while nothing listens (50 ms, 100 ms, 200 ms, ... apart).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let listener = TcpListener::bind(addr).await.unwrap();
        let mut bona = accept(&listener).await;
        assert_eq!(read_line(&mut bona).await, "PEER Clark\n");
    }

    #[actix_rt::test]
    async fn a_neighbor_that_stops_reading_makes_the_link_drop_its_queue_and_start_over() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (link, _) = link_to(listener.local_addr().unwrap(), &[]).await;
        let mut stalled = accept(&listener).await;
        assert_eq!(read_line(&mut stalled).await, "PEER Clark\n");
        // Far more than the socket buffers and the queue limit together, never read.
        let client = "x".repeat(250);
        let count = 3 * MAX_LINK_QUEUE_BYTES / 250;
        for time in 0..count {
            link.do_send(stored(&client, time as u32, None));
        }
        // The link gave up on the stalled connection and dialled again, hello first.
        let mut fresh = accept(&listener).await;
        assert_eq!(read_line(&mut fresh).await, "PEER Clark\n");
        // The stalled connection was closed: reading it drains what was sent, then ends.
        let mut rest = Vec::new();
        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut stalled, &mut rest),
        );
        assert!(
            drained.await.is_ok(),
            "the stalled connection was not closed"
        );
        assert!(
            rest.len() < count * 250,
            "everything was queued instead of dropped"
        );
    }
}
