//! The `ClientSession` actor: one per client TCP connection.
//!
//! The session reads its socket itself (a `ReadLoop` polled in its own context, so a read
//! costs no message) and cuts the bytes into lines ([`crate::line`]); it parses each line
//! ([`crate::protocol`]), asks the store or the places proxy when the answer needs them, and
//! writes answers in the order of the lines, even when a later one is ready first: every
//! line that gets an answer takes a place in an [`AnswerQueue`], and the answers at its
//! front that are due go to the socket ([`SocketOut`]) together.
//!
//! An IAMAT's answer is held in the queue until the store answers the [`Store`] that
//! carried its record, which it does only once every link has the record in its socket
//! (flood before reply; docs/ARCHITECTURE.md follows one line all the way), unless the
//! server has no link that could have to take it.
//!
//! A connection whose first line is `PEER <Name>` from a configured neighbor becomes the
//! receiving end of that neighbor's link: its AT lines go to the store, marked as coming
//! from that neighbor, and get no answer (the herd protocol). Having none, they take no place
//! in the queue and wait for nothing: the link is read as fast as the store takes its records. Client
//! commands on it are invalid: a link carries records one way.
//!
//! A client that sends faster than it reads is slowed, never dropped: the session stops
//! taking its lines while it owes too much ([`MAX_PENDING_ANSWERS`] answers, or
//! [`MAX_UNSENT_BYTES`] of answers the socket has not taken, or
//! [`MAX_WHATSATS_IN_FLIGHT`] places searches), so TCP pushes back on the client, and
//! takes them again as the answers drain. It checks after every line, keeping the rest of a
//! read for later, so what one connection holds stays bounded whatever it pipelines.
//!
//! Connections count against the server's cap on clients ([`ClientCount`]) until they
//! become a neighbor's link; one name has one link ([`InboundLinks`]), the newer
//! connection replacing the older.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker, ready};
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use log::{debug, warn};
use tokio::io::{AsyncRead, ReadBuf};

use super::location_store::{Lookup, Store};
use super::places_proxy::{NearbySearch, PlacesAnswer};
use crate::answer_queue::{Answer, AnswerQueue};
use crate::line::{Line, LineSplitter};
use crate::metrics::Metrics;
use crate::places_json::{self, UNKNOWN_ERROR};
use crate::protocol::{self, Command, Nanos, Record};
use crate::server_log::{NoteKind, ServerLog};
use crate::socket_out::{Flushed, SocketOut, Waiting, WriteLoop};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::tls;
use prometheus_client::metrics::gauge::Gauge;

/// The log target of this actor's mailbox: `RUST_LOG=herd::client_session=debug`.
pub const LOG_TARGET: &str = "herd::client_session";

/// Answers a session may owe before it stops reading the client's lines.
pub const MAX_PENDING_ANSWERS: usize = 1024;

/// Bytes of answers known but not yet taken by the socket, past which the session stops
/// taking the client's lines until they drain to half of it: a client that pipelines
/// faster than it reads gets its answers at the pace it reads them.
pub const MAX_UNSENT_BYTES: usize = 64 << 10;

/// WHATSATs whose answers are still being worked out, past which the session stops taking
/// lines: each answer may be tens of kilobytes, so this bounds what they will hold.
pub const MAX_WHATSATS_IN_FLIGHT: usize = 32;

/// Bytes taken from a socket in one read. One buffer per thread, shared by every reader,
/// so an idle connection holds none.
const READ_CHUNK_BYTES: usize = 16 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK_BYTES].into());
}

/// The other actors a session talks to, as recipients so a test can put fakes in their place.
#[derive(Clone)]
pub struct Services {
    /// The location store, for IAMAT.
    pub store: Recipient<Store>,
    /// The location store, for WHATSAT.
    pub lookup: Recipient<Lookup>,
    /// The places proxy, for WHATSAT.
    pub places: Recipient<NearbySearch>,
}

/// What a session needs to know about the server it belongs to.
#[derive(Clone)]
pub struct SessionSettings {
    /// The server's name, written into the AT lines it makes.
    pub server: Arc<str>,
    /// The longest client line, in bytes.
    pub max_line_bytes: usize,
    /// The server's log file.
    pub log: ServerLog,
    /// The neighbors allowed to open a herd link on this listener by saying `PEER <Name>`
    /// (none on the client address when the server has a separate `peer_addr`).
    pub neighbors: Arc<[Arc<str>]>,
    /// All the server's neighbors, whose links must take a record before its answer goes
    /// out (flood before reply): with none (but the one a record came from), answers need not
    /// wait for the store.
    pub links: Arc<[Arc<str>]>,
    /// Every server of the herd: a neighbor's record stamped by any other is refused.
    pub servers: Arc<[Arc<str>]>,
    /// How far ahead of the server's clock an IAMAT's time may be; `None`: no bound.
    pub max_clock_skew: Option<Duration>,
    /// The neighbors' links into this server, one per name.
    pub links_in: InboundLinks,
    /// The client connections open, for the cap on them.
    pub clients: ClientCount,
    /// Whether the store writes records to a file before it answers for them: then every
    /// IAMAT's answer waits for the store, links or not.
    pub durable: bool,
    /// What the server counts.
    pub metrics: Arc<Metrics>,
    /// Whether a hello needs a certificate naming the neighbor it says (a TLS link port):
    /// the connection's certificate, verified against the herd's CA, must name it.
    pub certified_hellos: bool,
}

/// The number of client connections a server holds; a connection stops counting once it
/// becomes a neighbor's link. Shared by the accept loops and the sessions of one server,
/// which all run on one thread.
#[derive(Clone, Default, Debug)]
pub struct ClientCount {
    count: Rc<Cell<usize>>,
    /// The same number, for the server's metrics.
    gauge: Gauge,
}

impl ClientCount {
    /// A count kept in `gauge` too.
    pub fn new(gauge: Gauge) -> ClientCount {
        ClientCount {
            count: Rc::default(),
            gauge,
        }
    }

    /// How many are open.
    pub fn get(&self) -> usize {
        self.count.get()
    }

    /// Counts one more connection, until the slot is dropped.
    pub fn take_slot(&self) -> ClientSlot {
        self.count.set(self.count.get() + 1);
        self.gauge.inc();
        ClientSlot(self.clone())
    }
}

/// One connection counted against the cap on clients; it stops counting when dropped (the
/// connection closed, or became a neighbor's link).
#[derive(Debug)]
pub struct ClientSlot(ClientCount);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let count = &self.0.count;
        count.set(count.get().saturating_sub(1));
        self.0.gauge.dec();
    }
}

/// The sessions that carry a neighbor's link into this server, by neighbor. A second hello
/// from the same name replaces the first connection (a neighbor that redialled after a
/// link died silently, or a stranger claiming its name): one name has one link.
#[derive(Clone, Default, Debug)]
pub struct InboundLinks(Rc<RefCell<HashMap<Arc<str>, InboundLink>>>);

/// The session that carries one neighbor's link into this server.
#[derive(Debug)]
struct InboundLink {
    /// Its connection's number in the log.
    conn: u64,
    session: Addr<ClientSession>,
}

impl InboundLinks {
    /// Records connection `conn` as `neighbor`'s link, and returns the one it replaces.
    fn replace(
        &self,
        neighbor: &Arc<str>,
        conn: u64,
        session: Addr<ClientSession>,
    ) -> Option<InboundLink> {
        let mut links = self.0.borrow_mut();
        links.insert(Arc::clone(neighbor), InboundLink { conn, session })
    }

    /// Forgets connection `conn` as `neighbor`'s link, unless a newer one took its place.
    fn remove(&self, neighbor: &str, conn: u64) {
        let mut links = self.0.borrow_mut();
        if links.get(neighbor).is_some_and(|link| link.conn == conn) {
            links.remove(neighbor);
        }
    }

    /// How many neighbors have a link into this server.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    /// Whether no neighbor has a link into this server.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One client connection.
pub struct ClientSession {
    /// This connection's number in the server's log.
    conn: u64,
    /// What every session of the server shares: its name, limits, log and neighbors.
    settings: SessionSettings,
    /// The actors this session asks: the store and the places proxy.
    services: Services,
    /// The answers due to the client, and the socket they go to.
    out: SocketOut<WriteHalf>,
    /// The answers owed, in line order (a line's number is its place in it).
    answers: AnswerQueue,
    /// Whether a [`WriteLoop`] waits for the socket to take more.
    writing: bool,
    /// WHATSATs whose answers are being worked out.
    whatsats_in_flight: usize,
    /// This connection's place under the cap on clients, while it is a client's.
    slot: Option<ClientSlot>,
    /// Where the connection comes from, for the log.
    from: Option<std::net::SocketAddr>,
    /// The certificate the other end showed (on a TLS port), checked against a hello.
    certificate: Option<rustls::pki_types::CertificateDer<'static>>,
    /// The loop reading the socket, until the client's last line or a drain.
    reader: Option<SpawnHandle>,
    /// Wakes the reader, paused because too many answers are owed.
    room: Option<Waker>,
    /// The client sent its last line (or the server is shutting down): finish and close.
    read_closed: bool,
    /// The neighbor at the other end, once it said hello: the connection then carries its
    /// records.
    peer: Option<Arc<str>>,
    /// Records of the lines taken since the last offer to the store: they go in one
    /// [`Store`] per read (or before the next lookup, which must see them).
    unstored: Vec<Record>,
    /// The first line whose answer waits for those records to be stored (an IAMAT's);
    /// `None` when none does (a neighbor's records have no answer, and no place in line).
    first_held: Option<u64>,
}

impl ClientSession {
    /// Starts a session on an accepted connection: a client's, counted under the cap on
    /// clients while it holds `slot`, or one let in past the cap to show a neighbor's hello
    /// (`None`).
    pub fn start(
        stream: Stream,
        conn: u64,
        settings: SessionSettings,
        services: Services,
        slot: Option<ClientSlot>,
    ) -> Addr<ClientSession> {
        let from = stream.peer_addr().ok();
        let certificate = stream.peer_certificate();
        let (read_half, write_half) = stream.into_split();
        ClientSession::create(move |ctx| {
            let reader = ctx.spawn(ReadLoop {
                half: read_half,
                splitter: LineSplitter::new(settings.max_line_bytes),
                held: Vec::new(),
                held_at: SystemTime::UNIX_EPOCH,
            });
            ClientSession {
                conn,
                settings,
                services,
                out: SocketOut::new(write_half),
                answers: AnswerQueue::default(),
                writing: false,
                whatsats_in_flight: 0,
                slot,
                from,
                certificate,
                reader: Some(reader),
                room: None,
                read_closed: false,
                peer: None,
                unstored: Vec::new(),
                first_held: None,
            }
        })
    }

    /// Takes one line: reserves its answer slot (unless it is a neighbor's record, which
    /// gets no answer) and starts working out its answer. `received` is when the line's
    /// bytes were read.
    ///
    /// Every line is logged as it comes ([`ServerLog::line_in`], at `[log] lines = "all"`);
    /// one found invalid is logged again as such ([`ServerLog::invalid_in`], which writes
    /// it at `"errors"` only), once that is known.
    fn take_line(&mut self, line: Line<'_>, received: SystemTime, ctx: &mut Context<Self>) {
        let bytes = match line {
            Line::Complete(bytes) => bytes,
            // A neighbor's record cut short by a dropped link must not be taken for a record.
            Line::Unterminated(bytes) if self.peer.is_some() => {
                let log = &self.settings.log;
                log.line_in(self.conn, received, bytes);
                return log.invalid_in(self.conn, received, bytes);
            }
            Line::Unterminated(bytes) => bytes,
            Line::TooLong(prefix) => {
                self.settings.log.line_in(self.conn, received, prefix);
                let slot = self.answers.reserve();
                return self.refuse(slot, prefix, received);
            }
        };
        self.settings.log.line_in(self.conn, received, bytes);
        let command = match Command::parse(bytes) {
            // No answer, so no slot: the record goes to the store with the others of this
            // read, and nothing waits for it there. One stamped by a server the herd does
            // not have is refused (answered, and the link goes on).
            Command::At(record) if self.peer.is_some() && self.knows_server(&record) => {
                self.settings.metrics.lines.peer_record.inc();
                return self.unstored.push(record);
            }
            command => command,
        };
        let slot = self.answers.reserve();
        match command {
            // A link opens with the hello: not a client's connection that
            // has already sent lines.
            Command::Hello(hello) if self.peer.is_none() && slot == 0 => {
                let neighbor = self.settings.neighbors.iter().find(|n| ***n == *hello.name);
                match neighbor {
                    Some(neighbor) if self.certified(neighbor) => {
                        let neighbor = Arc::clone(neighbor);
                        self.become_link(neighbor, ctx);
                        self.fill(slot, Answer::Silent);
                    }
                    Some(neighbor) => {
                        let note = format!(
                            "hello as {neighbor} refused: the connection's certificate does \
                             not name {neighbor}"
                        );
                        warn!(target: LOG_TARGET, "{}: conn {}: {note}", self.settings.server, self.conn);
                        let log = &self.settings.log;
                        log.invalid_in(self.conn, received, bytes);
                        log.note_as(NoteKind::Failure, Some(self.conn), note);
                        self.fill(slot, self.invalid(bytes));
                    }
                    None => self.refuse(slot, bytes, received),
                }
            }
            // A link carries records one way: a client's command on it is invalid (and an
            // IAMAT's record, marked as the neighbor's, would never be sent back to it).
            Command::Iamat(_) | Command::Whatsat(_) if self.peer.is_some() => {
                self.refuse(slot, bytes, received);
            }
            Command::Iamat(iamat) => {
                self.settings.metrics.lines.iamat.inc();
                let now = Nanos::from(received);
                // Stamped too far ahead of this server's clock: it would pin the client.
                let ahead = |skew: Duration| iamat.time.nanos.0 > now.0 + skew.as_nanos() as i128;
                if self.settings.max_clock_skew.is_some_and(ahead) {
                    return self.refuse(slot, bytes, received);
                }
                let record = Record::from_iamat(&self.settings.server, &iamat, now);
                // Its AT line must fit in a line, or no neighbor could take it.
                if record.line().len() > self.settings.max_line_bytes {
                    return self.refuse(slot, bytes, received);
                }
                self.hold_for_store(slot, record.clone(), Answer::At(record));
            }
            Command::Whatsat(whatsat) => {
                // The lookup must see the records of the lines before it.
                self.offer_records(ctx);
                self.settings.metrics.lines.whatsat.inc();
                self.settings.metrics.store_backlog.inc();
                let metrics = Arc::clone(&self.settings.metrics);
                let lookup = self.services.lookup.send(Lookup(whatsat.client.into()));
                let places = self.services.places.clone();
                let (radius, bound) = (whatsat.radius, whatsat.bound);
                // About a client the server has not heard of: invalid, as only the store
                // can tell.
                let unknown = protocol::invalid_answer(bytes);
                self.whatsats_in_flight += 1;
                let answer = async move {
                    let Ok(Some(record)) = lookup.await else {
                        return Err(unknown);
                    };
                    let Some(position) = record.position() else {
                        return Err(unknown);
                    };
                    let search = NearbySearch {
                        position,
                        radius,
                        bound,
                    };
                    metrics.places_backlog.inc();
                    let json = match places.send(search).await {
                        Ok(PlacesAnswer(json)) => json,
                        Err(_) => places_json::error_answer(
                            UNKNOWN_ERROR,
                            "the server's places proxy is not running",
                        ),
                    };
                    Ok(protocol::whatsat_answer(&record, &json))
                };
                ctx.spawn(answer.into_actor(self).map(move |answer, act, ctx| {
                    act.whatsats_in_flight -= 1;
                    let answer = match answer {
                        Ok(answer) => Answer::Text(answer.into()),
                        Err(unknown) => {
                            let line = invalid_line(&unknown).as_bytes();
                            act.settings.log.invalid_in(act.conn, received, line);
                            Answer::Invalid(unknown.into())
                        }
                    };
                    act.fill(slot, answer);
                    act.flush(ctx);
                }));
            }
            // A second hello, a hello from a stranger or after other lines, or a record on a
            // connection that did not say hello: invalid, and nothing changes.
            Command::Hello(_) | Command::At(_) | Command::Invalid => {
                self.refuse(slot, bytes, received);
            }
        }
    }

    /// Answers line `slot`, `line` as received at `received`, as invalid; the log (at
    /// `errors`) gets the line now that it is known to be invalid.
    fn refuse(&mut self, slot: u64, line: &[u8], received: SystemTime) {
        self.settings.log.invalid_in(self.conn, received, line);
        let answer = self.invalid(line);
        self.fill(slot, answer);
    }

    /// Keeps line `slot`'s answer until its record, offered with the others of this read,
    /// is stored.
    fn hold_for_store(&mut self, slot: u64, record: Record, answer: Answer) {
        self.first_held.get_or_insert(slot);
        self.unstored.push(record);
        self.answers.hold(slot, answer);
    }

    /// Whether a neighbor's record names a server of the herd as the one that heard it.
    fn knows_server(&self, record: &Record) -> bool {
        let server = record.server();
        self.settings.servers.iter().any(|s| **s == *server)
    }

    /// Whether the connection may speak for `neighbor`: on a TLS link port, only if its
    /// certificate names it.
    fn certified(&self, neighbor: &str) -> bool {
        !self.settings.certified_hellos
            || self
                .certificate
                .as_ref()
                .is_some_and(|certificate| tls::certifies(certificate, neighbor))
    }

    /// The connection said a neighbor's hello: from now on it carries that neighbor's
    /// records. It no longer counts as a client, and replaces the neighbor's older link.
    fn become_link(&mut self, neighbor: Arc<str>, ctx: &mut Context<Self>) {
        let log = &self.settings.log;
        log.note(Some(self.conn), format!("link from {neighbor} accepted"));
        self.slot = None;
        let older = self
            .settings
            .links_in
            .replace(&neighbor, self.conn, ctx.address());
        if let Some(InboundLink { conn, session }) = older {
            log.note(
                Some(conn),
                format!("link from {neighbor} replaced by conn {}", self.conn),
            );
            session.do_send(Replaced);
        }
        self.peer = Some(neighbor);
    }

    /// Whether the session owes the client so much that it must stop taking its lines.
    fn owes_too_much(&self) -> bool {
        self.answers.len() >= MAX_PENDING_ANSWERS
            || self.answers.known_bytes() + self.out.len() >= MAX_UNSENT_BYTES
            || self.whatsats_in_flight >= MAX_WHATSATS_IN_FLIGHT
    }

    /// Wakes a reader paused for owing too much, once what it owes has drained to half.
    fn wake_reader(&mut self) {
        let room = self.answers.len() < MAX_PENDING_ANSWERS / 2
            && self.answers.known_bytes() + self.out.len() < MAX_UNSENT_BYTES / 2
            && self.whatsats_in_flight < MAX_WHATSATS_IN_FLIGHT;
        if room && let Some(room) = self.room.take() {
            room.wake();
        }
    }

    /// Offers the records taken since the last offer to the store, in one message; their
    /// answers are due once it took them (and with them, the links: flood before reply).
    fn offer_records(&mut self, ctx: &mut Context<Self>) {
        if self.unstored.is_empty() {
            return;
        }
        let store = Store {
            records: std::mem::take(&mut self.unstored),
            from: self.peer.clone(),
        };
        self.settings.metrics.store_backlog.inc();
        // The lines whose answers wait for these records: every line taken since the
        // first of them that has one.
        let Some(first) = self.first_held.take() else {
            // Only a neighbor's records: no answer waits for the store.
            return self.services.store.do_send(store);
        };
        let lines = first..self.answers.next_line();
        if !self.wait_for_store() {
            // No link or file has to take these records, and the store takes them before any
            // message sent after this one (a `Lookup` included): their answers are due now,
            // without a round trip to the store (measured: ~0.2-0.35 us, 4-5%, per IAMAT).
            self.services.store.do_send(store);
            return self.records_stored(lines);
        }
        let stored = self.services.store.send(store);
        let conn = self.conn;
        let stored = async move {
            if let Err(e) = stored.await {
                log::error!(target: LOG_TARGET, "conn {conn}: the store is gone: {e}");
            }
        };
        ctx.spawn(stored.into_actor(self).map(move |(), act, ctx| {
            act.records_stored(lines);
            act.flush(ctx);
        }));
    }

    /// Whether the answers to this connection's records must wait for the store: it writes
    /// them to its file first, or a link other than the one they came from must take them.
    fn wait_for_store(&self) -> bool {
        self.settings.durable
            || self
                .settings
                .links
                .iter()
                .any(|link| Some(link) != self.peer.as_ref())
    }

    /// The records of `lines` are stored: their answers are due.
    fn records_stored(&mut self, lines: Range<u64>) {
        self.answers.release(lines);
        self.send_due();
    }

    /// Records the answer of line `slot`, and moves every answer now due to the output.
    fn fill(&mut self, slot: u64, answer: Answer) {
        self.answers.fill(slot, answer);
        self.send_due();
    }

    /// Moves the answers at the front that are due to the output, logging each.
    fn send_due(&mut self) {
        let mut now = None;
        let (log, conn, out) = (&self.settings.log, self.conn, self.out.buffer());
        self.answers.take_due(|answer| {
            let now = *now.get_or_insert_with(SystemTime::now);
            match answer {
                Answer::Silent => {}
                Answer::At(record) => {
                    let line = record.line();
                    log.line_out(conn, now, line);
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\n");
                }
                Answer::Text(text) => {
                    log.lines_out(conn, now, &text);
                    out.extend_from_slice(&text);
                }
                Answer::Invalid(text) => {
                    log.invalid_out(conn, now, &text);
                    out.extend_from_slice(&text);
                }
            }
        });
        self.wake_reader();
    }

    /// Hands the answers due to the socket, as much as it takes now; closes the session when
    /// everything owed has been delivered after the client's last line.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        match self.out.flush() {
            Ok(Flushed::All) => {}
            Ok(Flushed::Blocked) => {
                // The socket is full: a loop flushes again as it takes more.
                if !std::mem::replace(&mut self.writing, true) {
                    ctx.spawn(WriteLoop::new(|act: &mut ClientSession, ctx, waker| {
                        act.out.woken(waker);
                        act.flush(ctx);
                        if act.out.is_blocked() {
                            Waiting::Yes
                        } else {
                            act.writing = false;
                            Waiting::No
                        }
                    }));
                }
            }
            Err(e) => {
                debug!(target: LOG_TARGET, "conn {}: write failed: {e}", self.conn);
                return ctx.stop();
            }
        }
        self.wake_reader();
        if self.read_closed && self.out.is_empty() && self.answers.is_empty() {
            ctx.stop();
        }
    }

    fn close_reading(&mut self, ctx: &mut Context<Self>) {
        self.read_closed = true;
        self.flush(ctx);
    }
}

impl Actor for ClientSession {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        self.settings.metrics.connections_open.inc();
        let peer = self.from.map(|a| a.to_string());
        let peer = peer.as_deref().unwrap_or("an unknown address");
        self.settings.log.note_as(
            NoteKind::Connection,
            Some(self.conn),
            format_args!("opened from {peer}"),
        );
        debug!(target: LOG_TARGET, "conn {}: opened from {peer}", self.conn);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.settings.metrics.connections_open.dec();
        if let Some(neighbor) = &self.peer {
            self.settings.links_in.remove(neighbor, self.conn);
            let note = format!("link from {neighbor} closed");
            self.settings.log.note(Some(self.conn), note);
        }
        let log = &self.settings.log;
        log.note_as(NoteKind::Connection, Some(self.conn), "closed");
        debug!(target: LOG_TARGET, "conn {}: closed", self.conn);
    }
}

/// The server is stopping: read no more lines, deliver what is owed, then close.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for ClientSession {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        debug!(target: LOG_TARGET, "conn {}: Drain", self.conn);
        if let Some(reader) = self.reader.take() {
            ctx.cancel_future(reader);
        }
        self.close_reading(ctx);
    }
}

/// A newer connection from the same neighbor said hello: this one closes.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Replaced;

impl Handler<Replaced> for ClientSession {
    type Result = ();

    fn handle(&mut self, _: Replaced, ctx: &mut Context<Self>) {
        debug!(target: LOG_TARGET, "conn {}: Replaced", self.conn);
        ctx.stop();
    }
}

impl ClientSession {
    /// The answer to an invalid line, counted.
    fn invalid(&self, line: &[u8]) -> Answer {
        self.settings.metrics.lines.invalid.inc();
        Answer::Invalid(protocol::invalid_answer(line).into())
    }
}

/// The line an invalid line's answer (`? <line>\n`) repeats.
fn invalid_line(answer: &str) -> &str {
    let line = answer.strip_prefix("? ").unwrap_or(answer);
    line.strip_suffix('\n').unwrap_or(line)
}

/// The socket's reading side, polled inside the session's own context: lines reach the
/// session without a message or a task switch per read, and the session pauses it simply by
/// owing too much.
struct ReadLoop {
    /// The socket's reading side.
    half: ReadHalf,
    /// Keeps a line cut by the end of a read until the next read completes it.
    splitter: LineSplitter,
    /// Bytes read but not yet taken, because the session came to owe too much part-way
    /// through a read: at most one read's worth.
    held: Vec<u8>,
    /// When the held bytes were read.
    held_at: SystemTime,
}

/// Reads taken in one turn before the loop lets the other connections have theirs.
const READS_PER_TURN: usize = 4;

/// Hands `session` the lines of `bytes`, read at `received`, until it owes too much;
/// returns how many bytes it took.
fn take_lines(
    splitter: &mut LineSplitter,
    bytes: &[u8],
    received: SystemTime,
    session: &mut ClientSession,
    ctx: &mut Context<ClientSession>,
) -> usize {
    splitter.push_while(bytes, |line| {
        session.take_line(line, received, ctx);
        if session.owes_too_much() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
}

impl ActorFuture<ClientSession> for ReadLoop {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        session: &mut ClientSession,
        ctx: &mut Context<ClientSession>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..READS_PER_TURN {
            if session.owes_too_much() {
                session.room = Some(task.waker().clone());
                return Poll::Pending;
            }
            if !this.held.is_empty() {
                let taken = take_lines(&mut this.splitter, &this.held, this.held_at, session, ctx);
                this.held.drain(..taken);
                session.offer_records(ctx);
                session.flush(ctx);
                continue;
            }
            // `poll_read` rather than `readable` + `try_read`: after a short read it knows
            // the socket is drained and waits, where `try_read` would need one more system
            // call (answered "would block") per read to learn it.
            // The lines are taken straight from the buffer the bytes were read into.
            let ended = READ_BUFFER.with_borrow_mut(|buffer| {
                let mut filled = ReadBuf::new(buffer);
                let read = ready!(Pin::new(&mut this.half).poll_read(task, &mut filled));
                let received = SystemTime::now();
                let conn = session.conn;
                Poll::Ready(match read {
                    Ok(()) if filled.filled().is_empty() => {
                        debug!(target: LOG_TARGET, "conn {conn}: end of input");
                        this.splitter
                            .finish(|line| session.take_line(line, received, ctx));
                        true
                    }
                    Ok(()) => {
                        let bytes = filled.filled();
                        debug!(target: LOG_TARGET, "conn {conn}: read {} bytes", bytes.len());
                        let taken = take_lines(&mut this.splitter, bytes, received, session, ctx);
                        if taken < bytes.len() {
                            this.held.extend_from_slice(&bytes[taken..]);
                            this.held_at = received;
                        }
                        false
                    }
                    Err(_) => true,
                })
            });
            let Poll::Ready(ended) = ended else {
                return Poll::Pending;
            };
            session.offer_records(ctx);
            session.flush(ctx);
            if ended {
                session.reader = None;
                session.close_reading(ctx);
                return Poll::Ready(());
            }
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Record;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::watch;

    /// A store that answers lookups from a fixed record and remembers what it was offered,
    /// one list of lines per message; it answers a `Store` only if `answers`.
    struct FakeStore {
        offered: Arc<Mutex<Vec<Vec<String>>>>,
        known: Option<Record>,
        answers: bool,
    }
    impl Actor for FakeStore {
        type Context = Context<Self>;
    }
    impl Handler<Store> for FakeStore {
        type Result = ResponseFuture<usize>;
        fn handle(&mut self, msg: Store, _: &mut Context<Self>) -> Self::Result {
            let lines = msg.records.iter().map(|r| r.line().to_owned()).collect();
            self.offered.lock().unwrap().push(lines);
            let (count, answers) = (msg.records.len(), self.answers);
            Box::pin(async move {
                if !answers {
                    std::future::pending::<()>().await;
                }
                count
            })
        }
    }
    impl Handler<Lookup> for FakeStore {
        type Result = Option<Record>;
        fn handle(&mut self, Lookup(c): Lookup, _: &mut Context<Self>) -> Option<Record> {
            self.known.clone().filter(|r| r.client() == &*c)
        }
    }

    /// A places proxy that answers `{"n": <search number>, "m": <radius in metres>}` once
    /// its gate opens.
    struct FakePlaces {
        searches: Arc<Mutex<Vec<NearbySearch>>>,
        gate: watch::Receiver<bool>,
    }
    impl Actor for FakePlaces {
        type Context = Context<Self>;
    }
    impl Handler<NearbySearch> for FakePlaces {
        type Result = ResponseFuture<PlacesAnswer>;
        fn handle(&mut self, s: NearbySearch, _: &mut Context<Self>) -> Self::Result {
            let mut searches = self.searches.lock().unwrap();
            searches.push(s);
            let n = searches.len();
            let m = searches[n - 1].radius.metres().to_owned();
            let mut gate = self.gate.clone();
            Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
                PlacesAnswer(format!("{{\n\n\"n\": {n},\n\"m\": {m}\n}}\n"))
            })
        }
    }

    struct Harness {
        client: TcpStream,
        offered: Arc<Mutex<Vec<Vec<String>>>>,
        searches: Arc<Mutex<Vec<NearbySearch>>>,
        gate: watch::Sender<bool>,
    }

    /// The socket buffers of a test session, each way.
    const SOCKET_BUFFER_BYTES: u32 = 16 << 10;

    const KIWI: &str = "AT Other +0.100000000 kiwi +34.068930-118.445127 1621464827.959498503";

    /// A session of server Clark, whose one neighbor is Bona.
    async fn session(places_open: bool) -> Harness {
        session_with(places_open, &["Bona"], true).await
    }

    /// A session of server Clark with neighbors `links`, whose store answers `Store`s if
    /// `store_answers`.
    async fn session_with(places_open: bool, links: &[&str], store_answers: bool) -> Harness {
        // Small socket buffers (the accepted socket inherits the listener's), so that what
        // the session holds back shows, rather than vanishing into the kernel's buffers.
        let small_socket = || {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_send_buffer_size(SOCKET_BUFFER_BYTES).unwrap();
            socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES).unwrap();
            socket
        };
        let socket = small_socket();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = small_socket().connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let offered = Arc::new(Mutex::new(Vec::new()));
        let searches = Arc::new(Mutex::new(Vec::new()));
        let (gate, gate_rx) = watch::channel(places_open);
        let known = match Command::parse(KIWI.as_bytes()) {
            Command::At(r) => Some(r),
            _ => None,
        };
        let store = FakeStore {
            offered: Arc::clone(&offered),
            known,
            answers: store_answers,
        }
        .start();
        let places = FakePlaces {
            searches: Arc::clone(&searches),
            gate: gate_rx,
        }
        .start();
        let services = Services {
            store: store.clone().recipient(),
            lookup: store.recipient(),
            places: places.recipient(),
        };
        let settings = SessionSettings {
            server: Arc::from("Clark"),
            max_line_bytes: 64,
            log: ServerLog::discard(),
            neighbors: Arc::from([Arc::from("Bona")]),
            links: links.iter().map(|&link| Arc::from(link)).collect(),
            servers: ["Bona", "Campbell", "Clark", "Jaquez"]
                .map(Arc::from)
                .into(),
            max_clock_skew: Some(Duration::from_secs(300)),
            links_in: InboundLinks::default(),
            clients: ClientCount::default(),
            durable: false,
            metrics: Arc::default(),
            certified_hellos: false,
        };
        let slot = settings.clients.take_slot();
        ClientSession::start(Stream::Tcp(server), 1, settings, services, Some(slot));
        Harness {
            client,
            offered,
            searches,
            gate,
        }
    }

    /// Sends `input`, half-closes, and reads every answer up to the server's close.
    async fn exchange(client: &mut TcpStream, input: &[u8]) -> String {
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
            .await
            .expect("the session did not close")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[actix_rt::test]
    async fn iamat_is_offered_to_the_store_and_answered_with_its_at_line() {
        let mut h = session(true).await;
        let out = exchange(&mut h.client, b"IAMAT pear +1.5-2 1700000000.5\n").await;
        let offered = h.offered.lock().unwrap().concat();
        assert_eq!(offered.len(), 1);
        assert_eq!(out, format!("{}\n", offered[0]));
        assert!(out.starts_with("AT Clark +"), "{out}");
        assert!(out.ends_with(" pear +1.5-2 1700000000.5\n"), "{out}");
    }

    #[actix_rt::test]
    async fn whatsat_searches_around_the_stored_position() {
        let mut h = session(true).await;
        let out = exchange(&mut h.client, b"WHATSAT kiwi 1.5 7\n").await;
        assert_eq!(out, format!("{KIWI}\n{{\n\"n\": 1,\n\"m\": 1500\n}}\n\n"));
        let searches = h.searches.lock().unwrap();
        assert_eq!(searches.len(), 1);
        assert_eq!(searches[0].position.latitude, 34.068930);
        assert_eq!(searches[0].position.longitude, -118.445127);
        assert_eq!(searches[0].radius.metres(), "1500");
        assert_eq!(searches[0].bound, 7);
    }

    #[actix_rt::test]
    async fn whatsat_of_an_unknown_client_is_invalid_and_searches_nothing() {
        let mut h = session(true).await;
        let out = exchange(&mut h.client, b"WHATSAT nobody 10 5\n").await;
        assert_eq!(out, "? WHATSAT nobody 10 5\n");
        assert!(h.searches.lock().unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn answers_keep_line_order_when_a_later_one_is_ready_first() {
        let mut h = session(false).await;
        let gate = h.gate.clone();
        let searches = Arc::clone(&h.searches);
        // Open the places gate only once the quick lines behind the WHATSAT are answered
        // (they are held back by the session, so the client cannot see them yet).
        actix_rt::spawn(async move {
            while searches.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = gate.send(true);
        });
        let out = exchange(
            &mut h.client,
            b"WHATSAT kiwi 10 5\nnonsense\r\nPEER Zed\nAT x",
        )
        .await;
        assert_eq!(
            out,
            format!("{KIWI}\n{{\n\"n\": 1,\n\"m\": 10000\n}}\n\n? nonsense\n? PEER Zed\n? AT x\n")
        );
    }

    /// The first line `client` reads within `wait`, if any.
    async fn first_line(client: &mut TcpStream, wait: Duration) -> Option<String> {
        let mut line = Vec::new();
        let read = async {
            let mut byte = [0; 1];
            while client.read(&mut byte).await.ok()? == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            Some(String::from_utf8_lossy(&line).into_owned())
        };
        tokio::time::timeout(wait, read).await.ok().flatten()
    }

    #[actix_rt::test]
    async fn an_answer_waits_for_the_store_while_a_link_may_have_to_take_the_record() {
        let mut h = session_with(true, &["Bona"], false).await;
        h.client.write_all(b"IAMAT kiwi +1+1 1\n").await.unwrap();
        let answer = first_line(&mut h.client, Duration::from_millis(100)).await;
        assert_eq!(answer, None, "answered before the store took the record");
    }

    #[actix_rt::test]
    async fn without_other_neighbors_answers_do_not_wait_for_the_store() {
        // A server with no neighbor: the store never answers, the client is answered.
        let mut h = session_with(true, &[], false).await;
        h.client.write_all(b"IAMAT kiwi +1+1 1\n").await.unwrap();
        let answer = first_line(&mut h.client, Duration::from_secs(10)).await;
        assert!(answer.is_some_and(|a| a.starts_with("AT Clark ")));
        // A link from the only neighbor: its records hold up no answer behind them.
        let mut h = session_with(true, &["Bona"], false).await;
        let input = b"PEER Bona\nAT Bona +0.000000000 a +1+1 1\nbad\n";
        h.client.write_all(input).await.unwrap();
        let answer = first_line(&mut h.client, Duration::from_secs(10)).await;
        assert_eq!(answer.as_deref(), Some("? bad"));
        // Either way the store is offered the records.
        let offered = || h.offered.lock().unwrap().concat();
        for _ in 0..1000 {
            if !offered().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(offered(), ["AT Bona +0.000000000 a +1+1 1"]);
    }

    #[actix_rt::test]
    async fn a_neighbor_hello_turns_the_connection_into_a_silent_record_stream() {
        let mut h = session(true).await;
        let records = "AT Bona +0.000000000 a +1+1 1\nAT Bona +0.000000000 b +1+1 2\n";
        let input = format!(
            "PEER Bona\n{records}PEER Bona\nIAMAT kiwi +1+1 1\nWHATSAT kiwi 1 1\n\
             AT Bona +0.000000000 c +1+1"
        );
        let out = exchange(&mut h.client, input.as_bytes()).await;
        // After the hello records get no answer; a second hello and client commands are
        // invalid; a last record cut short by the end of the stream is dropped.
        assert_eq!(
            out,
            "? PEER Bona\n? IAMAT kiwi +1+1 1\n? WHATSAT kiwi 1 1\n"
        );
        let offered = h.offered.lock().unwrap().concat();
        assert_eq!(
            offered,
            [
                "AT Bona +0.000000000 a +1+1 1",
                "AT Bona +0.000000000 b +1+1 2"
            ]
        );
    }

    #[actix_rt::test]
    async fn a_hello_after_other_lines_opens_no_link() {
        let mut h = session(true).await;
        let input = "AT Bona +0.000000000 z +1+1 1\nPEER Bona\nAT Bona +0.000000000 a +1+1 1\n";
        let out = exchange(&mut h.client, input.as_bytes()).await;
        assert_eq!(
            out,
            "? AT Bona +0.000000000 z +1+1 1\n? PEER Bona\n? AT Bona +0.000000000 a +1+1 1\n"
        );
        assert!(h.offered.lock().unwrap().concat().is_empty());
    }

    #[actix_rt::test]
    async fn a_neighbors_records_wait_for_nothing_and_never_pause_its_link() {
        // Clark has another neighbor, Jaquez, and a store that never answers: records from
        // a client would hold their answers, but a neighbor's have none to hold.
        let mut h = session_with(true, &["Bona", "Jaquez"], false).await;
        let records: String = (0..2 * MAX_PENDING_ANSWERS)
            .map(|i| format!("AT Bona +0.000000000 c{i} +1+1 {i}\n"))
            .collect();
        h.client
            .write_all(format!("PEER Bona\n{records}bad\n").as_bytes())
            .await
            .unwrap();
        // Read past more records than a session may owe answers for, and the invalid line
        // after them answered at once.
        let answer = first_line(&mut h.client, Duration::from_secs(10)).await;
        assert_eq!(answer.as_deref(), Some("? bad"));
        // Every record was offered (the store may take the last message after the answer).
        let offered = || h.offered.lock().unwrap().concat().len();
        for _ in 0..1000 {
            if offered() == 2 * MAX_PENDING_ANSWERS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(offered(), 2 * MAX_PENDING_ANSWERS);
    }

    #[actix_rt::test]
    async fn the_records_of_one_read_go_to_the_store_in_one_message() {
        let mut h = session(true).await;
        let records: String = (0..100)
            .map(|i| format!("AT Bona +0.000000000 c{i} +1+1 {i}\n"))
            .collect();
        // One write of about 4 KiB: the session takes it in one read (or very few).
        let out = exchange(&mut h.client, format!("PEER Bona\n{records}").as_bytes()).await;
        assert_eq!(out, "");
        let offered = h.offered.lock().unwrap().clone();
        assert_eq!(offered.concat().len(), 100);
        assert!(
            offered.len() <= 3,
            "{} messages for 100 records",
            offered.len()
        );
    }

    #[actix_rt::test]
    async fn a_lookup_sees_the_iamats_before_it_in_the_same_read() {
        let mut h = session(true).await;
        // The fake store knows only kiwi; what matters is the order of the messages.
        let out = exchange(
            &mut h.client,
            b"IAMAT a +1+1 1\nIAMAT b +1+1 1\nWHATSAT kiwi 1 1\nIAMAT c +1+1 1\n",
        )
        .await;
        assert!(out.contains(&format!(" b +1+1 1\n{KIWI}\n")), "{out}");
        assert!(out.ends_with(" c +1+1 1\n"), "{out}");
        let offered = h.offered.lock().unwrap().clone();
        let clients: Vec<Vec<&str>> = offered
            .iter()
            .map(|batch| batch.iter().map(|l| l.split(' ').nth(3).unwrap()).collect())
            .collect();
        assert_eq!(clients, [vec!["a", "b"], vec!["c"]]);
    }

    #[actix_rt::test]
    async fn a_hello_from_a_server_that_is_not_a_neighbor_is_refused() {
        let mut h = session(true).await;
        let out = exchange(
            &mut h.client,
            b"PEER Campbell\nAT Campbell +0.000000000 a +1+1 1\n",
        )
        .await;
        assert_eq!(
            out,
            "? PEER Campbell\n? AT Campbell +0.000000000 a +1+1 1\n"
        );
        assert!(h.offered.lock().unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn a_too_long_line_is_answered_with_its_first_bytes_and_the_session_goes_on() {
        let mut h = session(true).await;
        let long = format!("IAMAT {}\nWHATSAT nobody 1 1\n", "x".repeat(200));
        let out = exchange(&mut h.client, long.as_bytes()).await;
        assert_eq!(out, format!("? {}\n? WHATSAT nobody 1 1\n", &long[..64]));
    }

    /// Waits until `check` holds, for at most ten seconds.
    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[actix_rt::test]
    async fn reading_pauses_while_too_many_whatsats_are_in_flight() {
        let h = session(false).await;
        // Line i asks for a radius of i metres, which the fake echoes in its answer.
        let count_lines = 4 * MAX_PENDING_ANSWERS;
        let lines: String = (1..=count_lines)
            .map(|i| format!("WHATSAT kiwi {}.{:03} 5\n", i / 1000, i % 1000))
            .collect();
        let (mut read, mut write) = h.client.into_split();
        let writer = actix_rt::spawn(async move {
            write.write_all(lines.as_bytes()).await.unwrap();
            write.shutdown().await.unwrap();
        });
        // The session takes lines until it has the most searches under way, then stops
        // reading, part-way through what it read.
        let searches = Arc::clone(&h.searches);
        let count = || searches.lock().unwrap().len();
        until("the searches start", || count() >= MAX_WHATSATS_IN_FLIGHT).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(count(), MAX_WHATSATS_IN_FLIGHT, "reading did not pause");
        // Once the answers come, reading resumes and every line is answered, in order.
        h.gate.send(true).unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        let out = String::from_utf8(out).unwrap();
        let radii: Vec<usize> = out
            .lines()
            .filter_map(|l| l.strip_prefix("\"m\": "))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(radii.len(), count_lines);
        let misplaced = radii.iter().enumerate().find(|(i, m)| i + 1 != **m);
        assert!(
            misplaced.is_none(),
            "answer out of line order: {misplaced:?}"
        );
    }

    #[actix_rt::test]
    async fn a_client_that_reads_slowly_is_slowed_not_dropped_and_gets_every_answer() {
        let h = session(true).await;
        // Far more answers than a session lets wait, sent without reading any.
        let count_lines = 100_000;
        let lines: String = (0..count_lines)
            .map(|i| format!("IAMAT c{i} +1+1 1\n"))
            .collect();
        let (mut read, mut write) = h.client.into_split();
        let writer = actix_rt::spawn(async move {
            write.write_all(lines.as_bytes()).await.unwrap();
            write.shutdown().await.unwrap();
        });
        // The session stops taking lines once its answers wait unread (beyond what the
        // sockets' buffers hold), instead of reading everything.
        let offered = Arc::clone(&h.offered);
        let count = || offered.lock().unwrap().iter().map(Vec::len).sum::<usize>();
        until("the first records are offered", || count() > 0).await;
        let mut last = 0;
        while count() != last {
            last = count();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            last < count_lines / 2,
            "{last} lines taken: reading did not pause"
        );
        assert!(!writer.is_finished(), "the client could send everything");
        // Read slowly: every answer comes, in order.
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut chunk))
                .await
                .expect("the answers stalled")
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            if out.len() % 16 == 0 {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        }
        writer.await.unwrap();
        let out = String::from_utf8(out).unwrap();
        let clients: Vec<&str> = out.lines().map(|l| l.split(' ').nth(3).unwrap()).collect();
        assert_eq!(clients.len(), count_lines);
        for (i, client) in clients.iter().enumerate() {
            assert_eq!(*client, format!("c{i}"), "answer {i} out of order");
        }
    }
}
