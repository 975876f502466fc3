//! The `ClientSession` actor: one per client TCP connection.
//!
//! The session reads its socket itself (`read_loop.rs`, polled in its own context, so a read
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
//! A WHATSAT's answer is worked out by the store and the places proxy (`whatsat.rs`) while
//! the lines after it go on.
//!
//! A connection whose first line is `PEER <Name>` from a configured neighbor becomes the
//! receiving end of that neighbor's link (`link_in.rs`): its AT lines go to the store,
//! marked as coming from that neighbor, and get no answer (the herd protocol). Having
//! none, they take no place in the queue and wait for nothing: the link is read as fast as
//! the store takes its records. Client commands on it are invalid: a link carries records
//! one way.
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
//! connection replacing the older (`connections.rs`).

mod connections;
mod link_in;
mod read_loop;
mod whatsat;

pub use connections::{ClientCount, ClientSlot, InboundLinks};
pub use link_in::Replaced;

use std::ops::Range;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use log::debug;

use super::location_store::{Lookup, Store};
use super::places_proxy::NearbySearch;
use crate::answer_queue::{Answer, AnswerQueue};
use crate::line::Line;
use crate::metrics::Metrics;
use crate::protocol::{self, Command, Iamat, Nanos, Record};
use crate::server_log::{NoteKind, ServerLog};
use crate::socket_out::{Flushed, SocketOut, Waiting, WriteLoop};
use crate::stream::{Stream, WriteHalf};
use read_loop::ReadLoop;

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
            let reader = ctx.spawn(ReadLoop::new(read_half, settings.max_line_bytes));
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
                self.hello(slot, hello, bytes, received, ctx);
            }
            // A link carries records one way: a client's command on it is invalid (and an
            // IAMAT's record, marked as the neighbor's, would never be sent back to it).
            Command::Iamat(_) | Command::Whatsat(_) if self.peer.is_some() => {
                self.refuse(slot, bytes, received);
            }
            Command::Iamat(iamat) => self.iamat(slot, &iamat, bytes, received),
            Command::Whatsat(whatsat) => self.whatsat(slot, whatsat, bytes, received, ctx),
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

    /// Takes line `slot`, an IAMAT (`line`, received at `received`): its record goes to the
    /// store with the others of this read, and its answer, the record's AT line, is held
    /// until the store took them.
    fn iamat(&mut self, slot: u64, iamat: &Iamat<'_>, line: &[u8], received: SystemTime) {
        self.settings.metrics.lines.iamat.inc();
        let now = Nanos::from(received);
        // Stamped too far ahead of this server's clock: it would pin the client.
        let ahead = |skew: Duration| iamat.time.nanos.0 > now.0 + skew.as_nanos() as i128;
        if self.settings.max_clock_skew.is_some_and(ahead) {
            return self.refuse(slot, line, received);
        }
        let record = Record::from_iamat(&self.settings.server, iamat, now);
        // Its AT line must fit in a line, or no neighbor could take it.
        if record.line().len() > self.settings.max_line_bytes {
            return self.refuse(slot, line, received);
        }
        self.first_held.get_or_insert(slot);
        self.unstored.push(record.clone());
        self.answers.hold(slot, Answer::At(record));
    }

    /// The answer to an invalid line, counted.
    fn invalid(&self, line: &[u8]) -> Answer {
        self.settings.metrics.lines.invalid.inc();
        Answer::Invalid(protocol::invalid_answer(line).into())
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

#[cfg(test)]
mod tests;
