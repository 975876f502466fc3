//! What the sessions of one server count and share about their connections: how many are
//! clients' (for the cap on clients), and which session carries each neighbor's link in.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::Addr;
use prometheus_client::metrics::gauge::Gauge;

use super::ClientSession;

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
pub(super) struct InboundLink {
    /// Its connection's number in the log.
    pub(super) conn: u64,
    /// The session, told when a newer connection replaces it.
    pub(super) session: Addr<ClientSession>,
}

impl InboundLinks {
    /// Records connection `conn` as `neighbor`'s link, and returns the one it replaces.
    pub(super) fn replace(
        &self,
        neighbor: &Arc<str>,
        conn: u64,
        session: Addr<ClientSession>,
    ) -> Option<InboundLink> {
        let mut links = self.0.borrow_mut();
        links.insert(Arc::clone(neighbor), InboundLink { conn, session })
    }

    /// Forgets connection `conn` as `neighbor`'s link, unless a newer one took its place.
    pub(super) fn remove(&self, neighbor: &str, conn: u64) {
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
