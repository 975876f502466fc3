//! The receiving end of a neighbor's herd link: a connection whose first line is a
//! configured neighbor's hello (`PEER <Name>`, with a certificate naming it on a TLS link
//! port) carries that neighbor's records from then on, and replaces any older connection
//! that said the same hello.

use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use log::{debug, warn};

use super::connections::InboundLink;
use super::{ClientSession, LOG_TARGET};
use crate::answer_queue::Answer;
use crate::protocol::{Hello, Record};
use crate::server_log::NoteKind;
use crate::tls;

impl ClientSession {
    /// Takes line `slot`, a hello (`line`, received at `received`) that opens the
    /// connection: from a neighbor that may speak for itself here, it makes the connection
    /// that neighbor's link (and gets no answer); from anyone else it is invalid.
    pub(super) fn hello(
        &mut self,
        slot: u64,
        hello: Hello<'_>,
        line: &[u8],
        received: SystemTime,
        ctx: &mut Context<Self>,
    ) {
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
                log.invalid_in(self.conn, received, line);
                log.note_as(NoteKind::Failure, Some(self.conn), note);
                self.fill(slot, self.invalid(line));
            }
            None => self.refuse(slot, line, received),
        }
    }

    /// Whether a neighbor's record names a server of the herd as the one that heard it.
    pub(super) fn knows_server(&self, record: &Record) -> bool {
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
