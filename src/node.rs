//! Starting one server of the herd, and stopping it cleanly.
//!
//! A node is its actors (one `LocationStore`, one `PlacesProxy`, a `PeerLink` per
//! neighbor), its log file, its store file, and an accept loop per listening address (the
//! client address, and the `peer_addr` and `tls_addr` if it has them) that starts a
//! `ClientSession` per connection, with the admin listener beside them if it has one.
//! Start-up takes an already bound listener ([`Node::start_on`]) so tests can bind port 0
//! and start whole herds in one process; [`Node::start`] binds the configured address
//! first.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsStream};

use crate::actors::client_session::{
    ClientCount, ClientSession, ClientSlot, Drain, InboundLinks, Services, SessionSettings,
};
use crate::actors::location_store::{CloseFile, LocationStore, Subscribe};
use crate::actors::peer_link::{Close, PeerLink};
use crate::actors::places_proxy::{ApiKey, PlacesProxy};
use crate::admin::{self, AdminState};
use crate::config::{ConfigError, HerdConfig};
use crate::metrics::Metrics;
use crate::protocol::{self, Command};
use crate::record_table::RecordTable;
use crate::server_log::{LogWriter, NoteKind, ServerLog};
use crate::store_file::{StoreFile, StoreFileError};
use crate::stream::Stream;
use crate::tls::{self, CurrentTls, HerdTls, TlsError};

/// The log target of start-up, accept and shutdown messages.
pub const LOG_TARGET: &str = "herd::node";

/// How long to wait after a failed accept (out of file descriptors, say) before the next,
/// so that the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long a connection that comes past the cap on clients has to show a neighbor's hello
/// before it is closed: a neighbor's link says it as soon as it connects.
const HELLO_WAIT: Duration = Duration::from_secs(1);

/// The longest hello line looked for on a connection past the cap on clients.
const HELLO_PEEK_BYTES: usize = 512;

/// How often a server looks whether its certificate is near its end.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a stopping server waits for sessions to deliver what they owe, beyond the
/// places timeout (the longest any answer can take).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The name or the file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listening address could not be bound.
    #[error("{name}: cannot listen on {addr}: {error}")]
    Bind {
        /// The server.
        name: String,
        /// The address it tried.
        addr: SocketAddr,
        /// Why not: in the message, not a separate source, so that it is said once.
        error: io::Error,
    },
    /// The server's store file could not be read.
    #[error("{name}: {error}")]
    Store {
        /// The server.
        name: String,
        /// What is wrong with it: in the message, so that it is said once.
        error: StoreFileError,
    },
    /// The server's TLS files could not be used.
    #[error("{name}: {error}")]
    Tls {
        /// The server.
        name: String,
        /// What is wrong with them: in the message, so that it is said once.
        error: TlsError,
    },
    /// The log file could not be opened.
    #[error("{name}: cannot open its log in {dir}: {error}")]
    Log {
        /// The server.
        name: String,
        /// The log directory.
        dir: PathBuf,
        /// Why not: in the message, not a separate source, so that it is said once.
        error: io::Error,
    },
}

/// A running server. [`Node::stop`] stops it in order. Dropping it instead ends its accept
/// loops and writes out its log, but leaves its store and links to the actix system.
pub struct Node {
    name: String,
    client_addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    store: Addr<LocationStore>,
    links: Vec<Addr<PeerLink>>,
    clients: ClientCount,
    /// The TLS settings in force, with `[tls]`.
    tls: Option<CurrentTls>,
    /// Where the TLS files are read from again on [`Node::reload_tls`].
    tls_dir: Option<PathBuf>,
    /// The task that warns of a certificate near its end, daily.
    watching_expiry: Option<JoinHandle<()>>,
    /// The admin listener, stopped with the server.
    admin: Option<actix_web::dev::ServerHandle>,
    log: ServerLog,
    log_writer: LogWriter,
    stop: watch::Sender<bool>,
    accepting: Vec<JoinHandle<()>>,
}

impl Node {
    /// Binds the server's configured client address and starts it. Must run inside an
    /// actix `System`.
    pub async fn start(
        config: &HerdConfig,
        name: &str,
        key: Option<ApiKey>,
    ) -> Result<Node, StartError> {
        let addr = config.node(name)?.listen_addr();
        let listener = bind(name, addr).await?;
        Self::start_on(config, name, listener, key)
    }

    /// Starts server `name` of `config` on an already bound client listener. A separate
    /// `peer_addr`, if configured, is bound here (on the `listen` IP when one is set).
    pub fn start_on(
        config: &HerdConfig,
        name: &str,
        listener: TcpListener,
        key: Option<ApiKey>,
    ) -> Result<Node, StartError> {
        let node = config.node(name)?;
        let bind_error = |addr, error| StartError::Bind {
            name: name.to_owned(),
            addr,
            error,
        };
        let client_addr = listener
            .local_addr()
            .map_err(|e| bind_error(node.listen_addr(), e))?;
        // The other ports are bound on the `listen` IP when one is set.
        let bind_also = |configured: Option<SocketAddr>| -> Result<_, StartError> {
            let Some(configured) = configured else {
                return Ok(None);
            };
            let ip = node.listen.map_or(configured.ip(), |l| l.ip());
            let addr = SocketAddr::new(ip, configured.port());
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
                .map_err(|e| bind_error(addr, e))?;
            Ok(Some(listener))
        };
        let peer_listener = bind_also(node.peer_addr)?;
        let tls_listener = bind_also(node.tls_addr)?;
        let admin_listener = bind_also(node.admin_addr)?;
        let peer_addr = peer_listener.as_ref().and_then(|l| l.local_addr().ok());
        let tls_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
        let tls = match &config.tls {
            Some(files) => {
                let tls = HerdTls::load(&files.dir, name).map_err(|error| StartError::Tls {
                    name: name.to_owned(),
                    error,
                })?;
                Some(CurrentTls::new(tls))
            }
            None => None,
        };
        let (log, log_writer) =
            ServerLog::open(&config.log, name).map_err(|error| StartError::Log {
                name: name.to_owned(),
                dir: config.log.dir.clone(),
                error,
            })?;
        // awc's TLS needs a process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match config.limits.max_clients {
            Some(max) => log.note(
                None,
                format!("{name} listening on {client_addr}, for at most {max} clients at once"),
            ),
            None => log.note(None, format!("{name} listening on {client_addr}")),
        }
        if let Some(peer_addr) = peer_addr {
            let how = if tls.is_some() { " over TLS" } else { "" };
            log.note(
                None,
                format!("{name} accepting herd links on {peer_addr}{how}"),
            );
        }
        if let Some(tls_addr) = tls_addr {
            log.note(
                None,
                format!("{name} listening for TLS clients on {tls_addr}"),
            );
        }
        if key.is_none() {
            log.note(
                None,
                "no places API key: places calls go without one (Google refuses them)",
            );
        }

        let me: Arc<str> = Arc::from(name);
        let mut records = RecordTable::default();
        let file = open_store_file(config, name, &mut records, &log)?;
        let durable = file.is_some();
        let neighbor_names: Vec<&str> = config.neighbors(name).map(|n| n.name.as_str()).collect();
        let metrics = Arc::new(Metrics::new(neighbor_names, log.clone()));
        // The one step that may still fail, before anything runs that would outlive it.
        let admin = match (admin_listener, node.admin_addr) {
            (Some(listener), Some(configured)) => Some(start_admin(
                config,
                name,
                (listener, configured),
                &metrics,
                &log,
            )?),
            _ => None,
        };
        let store = LocationStore::new(records, file)
            .with_metrics(Arc::clone(&metrics))
            .start();
        let mut links = Vec::new();
        for neighbor in config.neighbors(name) {
            let link = PeerLink::new(
                Arc::clone(&me),
                Arc::from(neighbor.name.as_str()),
                neighbor.peer_addr.unwrap_or(neighbor.addr),
                tls.clone(),
                store.clone().recipient(),
                log.clone(),
            )
            .with_metrics(&metrics)
            .start();
            store.do_send(Subscribe {
                subscriber: link.clone().recipient(),
                neighbor: Arc::from(neighbor.name.as_str()),
            });
            links.push(link);
        }
        let places = PlacesProxy::new(config.places.clone(), key)
            .with_metrics(Arc::clone(&metrics))
            .start();
        let services = Services {
            store: store.clone().recipient(),
            lookup: store.clone().recipient(),
            places: places.recipient(),
        };
        let neighbors: Arc<[Arc<str>]> = config
            .neighbors(name)
            .map(|n| Arc::from(n.name.as_str()))
            .collect();
        let servers: Arc<[Arc<str>]> = config
            .nodes
            .iter()
            .map(|n| Arc::from(n.name.as_str()))
            .collect();
        let settings = SessionSettings {
            server: me,
            max_line_bytes: config.limits.max_line_bytes,
            servers,
            max_clock_skew: config.limits.max_clock_skew,
            links_in: InboundLinks::default(),
            clients: ClientCount::new(metrics.clients.clone()),
            durable,
            metrics: Arc::clone(&metrics),
            certified_hellos: false,
            log: log.clone(),
            // With a separate peer address, a hello on the client address is refused.
            neighbors: if peer_listener.is_some() {
                Arc::from([])
            } else {
                Arc::clone(&neighbors)
            },
            links: Arc::clone(&neighbors),
        };
        let (stop, stopped) = watch::channel(false);
        let clients = settings.clients.clone();
        let accept = Accept {
            settings,
            services,
            stopped,
            grace: config.places.timeout + SHUTDOWN_GRACE,
            max_clients: config.limits.max_clients.unwrap_or(usize::MAX),
            tls: None,
        };
        let mut accepting = vec![actix_rt::spawn(accept.clone().run(listener))];
        if let Some(peer_listener) = peer_listener {
            let mut accept = accept.clone();
            accept.settings.neighbors = neighbors;
            if let Some(tls) = &tls {
                accept.settings.certified_hellos = true;
                accept.tls = Some((tls.clone(), Port::Links));
            }
            accepting.push(actix_rt::spawn(accept.run(peer_listener)));
        }
        if let (Some(tls_listener), Some(tls)) = (tls_listener, &tls) {
            let mut accept = accept;
            accept.tls = Some((tls.clone(), Port::Clients));
            accepting.push(actix_rt::spawn(accept.run(tls_listener)));
        }
        let watching_expiry = tls
            .clone()
            .map(|tls| actix_rt::spawn(watch_expiry(tls, log.clone(), name.to_owned())));
        debug!(target: LOG_TARGET, "{name} listening on {client_addr}");
        Ok(Node {
            name: name.to_owned(),
            client_addr,
            peer_addr,
            store,
            links,
            clients,
            tls,
            tls_dir: config.tls.as_ref().map(|t| t.dir.clone()),
            watching_expiry,
            admin,
            log,
            log_writer,
            stop,
            accepting,
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address clients connect to.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The address neighbors connect to, when apart from the client address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// How many client connections the server holds now.
    pub fn clients(&self) -> usize {
        self.clients.get()
    }

    /// The server's location store (for tests).
    pub fn store(&self) -> &Addr<LocationStore> {
        &self.store
    }

    /// Opens the log file at its path again: after a rotation moved it away, the log goes
    /// on in a new file there.
    pub fn reopen_log(&self) {
        self.log_writer.reopen();
    }

    /// Reads the TLS files again (on SIGUSR1): connections opened from now on use them, those
    /// open keep theirs. Files that cannot be used are said, and the ones in force kept.
    pub fn reload_tls(&self) {
        let (Some(tls), Some(dir)) = (&self.tls, &self.tls_dir) else {
            return;
        };
        match HerdTls::load(dir, &self.name) {
            Ok(fresh) => {
                let warning = fresh.expiry_warning(SystemTime::now());
                tls.set(fresh);
                self.log
                    .note(None, "TLS files read again: new connections use them");
                if let Some(warning) = warning {
                    warn!(target: LOG_TARGET, "{}: {warning}", self.name);
                    self.log.note_as(NoteKind::Failure, None, warning);
                }
            }
            Err(e) => {
                let note = format!("TLS files not read again, those in force kept: {e}");
                warn!(target: LOG_TARGET, "{}: {note}", self.name);
                self.log.note_as(NoteKind::Failure, None, note);
            }
        }
    }

    /// Stops accepting, lets every session deliver the answers it owes (within the places
    /// timeout and a second), closes the links, then flushes and closes the log.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Some(watching) = &self.watching_expiry {
            watching.abort();
        }
        if let Some(admin) = &self.admin {
            admin.stop(true).await;
        }
        for accepting in self.accepting {
            let _ = accepting.await;
        }
        for link in &self.links {
            let _ = link.send(Close).await;
        }
        let _ = self.store.send(CloseFile).await;
        self.log.note(None, "stopped");
        self.log_writer.close();
        info!(target: LOG_TARGET, "{} stopped", self.name);
    }
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind {
            name: name.to_owned(),
            addr,
            error,
        })
}

/// Starts server `name`'s admin listener on `listener` (bound for `configured`), serving
/// `metrics`.
fn start_admin(
    config: &HerdConfig,
    name: &str,
    (listener, configured): (TcpListener, SocketAddr),
    metrics: &Arc<Metrics>,
    log: &ServerLog,
) -> Result<actix_web::dev::ServerHandle, StartError> {
    let state = AdminState {
        name: name.to_owned(),
        metrics: Arc::clone(metrics),
        servers: config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.admin_addr))
            .collect(),
        links: config.links.clone().into(),
    };
    let bound = listener.local_addr();
    let started = listener
        .into_std()
        .and_then(|listener| admin::start(listener, state));
    let (addr, handle) = bound
        .and_then(|addr| started.map(|handle| (addr, handle)))
        .map_err(|error| StartError::Bind {
            name: name.to_owned(),
            addr: configured,
            error,
        })?;
    log.note(
        None,
        format!("{name} serving its admin page and metrics on {addr}"),
    );
    Ok(handle)
}

/// Opens server `name`'s store file, if it keeps one, reading its records into `records`;
/// says in the log what it read, and a torn last line cut off.
fn open_store_file(
    config: &HerdConfig,
    name: &str,
    records: &mut RecordTable,
    log: &ServerLog,
) -> Result<Option<StoreFile>, StartError> {
    let Some(dir) = &config.store.dir else {
        return Ok(None);
    };
    let path = dir.join(format!("{name}.aof"));
    let started = std::time::Instant::now();
    let opened = StoreFile::open(&path, &config.store, records, log.clone(), name);
    let (file, loaded) = opened.map_err(|error| StartError::Store {
        name: name.to_owned(),
        error,
    })?;
    if loaded.torn_bytes > 0 {
        let note = format!(
            "{}: its last line was cut short ({} bytes, never acknowledged): cut off",
            path.display(),
            loaded.torn_bytes
        );
        warn!(target: LOG_TARGET, "{name}: {note}");
        log.note_as(NoteKind::Failure, None, note);
    }
    log.note(
        None,
        format!(
            "{} records read from {} ({} lines, {} ms); fsync {}",
            records.len(),
            path.display(),
            loaded.lines,
            started.elapsed().as_millis(),
            config.store.fsync
        ),
    );
    Ok(Some(file))
}

/// What an accept loop needs: the sessions' settings and services, when to stop, and the
/// cap on clients.
#[derive(Clone)]
struct Accept {
    settings: SessionSettings,
    services: Services,
    stopped: watch::Receiver<bool>,
    /// How long sessions may take to deliver what they owe once the server stops.
    grace: Duration,
    /// The most client connections the server holds at once.
    max_clients: usize,
    /// On a TLS port: the settings in force, and which port it is.
    tls: Option<(CurrentTls, Port)>,
}

/// Which TLS port a listener is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// The peer port with `[tls]`: neighbors show a certificate of the herd's CA.
    Links,
    /// `tls_addr`: clients show nothing.
    Clients,
}

impl Accept {
    /// An accept loop, then, once told to stop, the draining of the sessions it started.
    async fn run(mut self, listener: TcpListener) {
        let settings = self.settings.clone();
        let opening = Opening {
            settings: self.settings.clone(),
            services: self.services.clone(),
            sessions: Rc::default(),
        };
        // Accepts that failed in a row: the first and the recovery are said, not each retry.
        let mut failed = 0u64;
        // Connections come past the cap on clients since the last one taken: the first
        // and the end of such an episode are said, not each connection.
        let mut past_cap = 0u64;
        // Connections past the cap being looked at for a neighbor's hello.
        let probing = Rc::new(Cell::new(0usize));
        loop {
            let accepted = tokio::select! {
                _ = self.stopped.changed() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: the connections wait in the listen
                    // backlog, and are accepted in order once some close.
                    if failed == 0 {
                        let note = format!(
                            "accept failed: {e}; new connections wait, retried every {} ms",
                            ACCEPT_ERROR_PAUSE.as_millis()
                        );
                        warn!(target: LOG_TARGET, "{}: {note}", settings.server);
                        settings.log.note_as(NoteKind::Failure, None, note);
                    }
                    failed += 1;
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            if failed > 0 {
                let note = format!("accepting again, after {failed} failed accepts");
                info!(target: LOG_TARGET, "{}: {note}", settings.server);
                settings.log.note(None, note);
                failed = 0;
            }
            settings.metrics.connections_accepted.inc();
            // Answers are written whole; Nagle would only delay them.
            let _ = stream.set_nodelay(true);
            let at_cap = settings.clients.get() >= self.max_clients;
            if at_cap {
                if past_cap == 0 {
                    let note = format!(
                        "holding max_clients ({}) client connections: new ones are closed \
                         at once, but for neighbors' links",
                        self.max_clients
                    );
                    warn!(target: LOG_TARGET, "{}: {note}", settings.server);
                    settings.log.note(None, note);
                }
                past_cap += 1;
                // A neighbor's link may come on this listener: it is let in past the cap,
                // a few connections at a time.
                if probing.get() >= settings.neighbors.len() {
                    continue;
                }
            } else if past_cap > 0 {
                let note = format!(
                    "taking clients again, after {past_cap} connections came past max_clients"
                );
                info!(target: LOG_TARGET, "{}: {note}", settings.server);
                settings.log.note(None, note);
                past_cap = 0;
            }
            let slot = (!at_cap).then(|| settings.clients.take_slot());
            let opening = opening.clone();
            let work = match &self.tls {
                None if !at_cap => {
                    opening.start(Stream::Tcp(stream), slot);
                    continue;
                }
                None => Box::pin(admit_link(stream, opening)) as Pin<Box<dyn Future<Output = ()>>>,
                Some((tls, port)) => Box::pin(open_tls(stream, tls.get(), *port, opening, slot)),
            };
            // Past the cap, the connections looked at are counted.
            if at_cap {
                probing.set(probing.get() + 1);
            }
            let probing = Rc::clone(&probing);
            actix_rt::spawn(async move {
                work.await;
                if at_cap {
                    probing.set(probing.get() - 1);
                }
            });
        }
        drop(listener);
        let sessions = opening.sessions.borrow_mut().close();
        for session in &sessions {
            session.do_send(Drain);
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        while sessions.iter().any(Addr::connected) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What starting a session on an accepted connection needs, and the sessions started, to
/// be drained when the server stops.
#[derive(Clone)]
struct Opening {
    settings: SessionSettings,
    services: Services,
    sessions: Rc<RefCell<Sessions>>,
}

impl Opening {
    /// Starts a session on `stream`, a client's while it holds `slot`; once the listener
    /// has stopped (a TLS handshake or a hello past the cap ending late), the connection is
    /// closed instead, as no drain would reach its session.
    fn start(&self, stream: Stream, slot: Option<ClientSlot>) {
        if self.sessions.borrow().closed {
            return;
        }
        let conn = self.settings.log.next_conn();
        let settings = self.settings.clone();
        let session = ClientSession::start(stream, conn, settings, self.services.clone(), slot);
        self.sessions.borrow_mut().push(session);
    }
}

/// The sessions a listener started and that may still run.
#[derive(Default)]
struct Sessions {
    open: Vec<Addr<ClientSession>>,
    /// How many `open` may hold before those that ended are forgotten: twice what was left
    /// the last time, so that all told there are about as many checks as sessions.
    prune_at: usize,
    /// The listener stopped: no session starts any more.
    closed: bool,
}

impl Sessions {
    fn push(&mut self, session: Addr<ClientSession>) {
        self.open.push(session);
        if self.open.len() >= self.prune_at {
            self.open.retain(Addr::connected);
            self.prune_at = (2 * self.open.len()).max(64);
        }
    }

    /// Stops taking sessions, and returns those that may still run, to be drained.
    fn close(&mut self) -> Vec<Addr<ClientSession>> {
        self.closed = true;
        std::mem::take(&mut self.open)
    }
}

/// The first byte of a TLS client's first message (a handshake record); a client that
/// speaks plain text to a TLS port starts with a letter.
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// How long a TLS handshake may take before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a session on a TLS port: the handshake, then the session over it. A connection
/// that speaks plain text gets its first line answered `? ...` (a refused hello, on the
/// links' port) and is closed; a failed handshake (a certificate of another CA, say) is
/// said in the log, with the reason. Past the cap on clients (no `slot`), only a
/// neighbor's certificate is let in.
async fn open_tls(
    stream: TcpStream,
    tls: Arc<HerdTls>,
    port: Port,
    opening: Opening,
    slot: Option<ClientSlot>,
) {
    let settings = &opening.settings;
    let from = stream
        .peer_addr()
        .map_or_else(|_| "an unknown address".to_owned(), |a| a.to_string());
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => return refuse_plain_text(stream, settings, &from, port).await,
        _ => return,
    }
    let config = match port {
        Port::Links => Arc::clone(&tls.links_in),
        Port::Clients => Arc::clone(&tls.clients_in),
    };
    let handshake = TlsAcceptor::from(config).accept(stream);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(stream)) => Stream::Tls(Box::new(TlsStream::Server(stream))),
        Ok(Err(e)) => {
            return say_refused(settings, &format!("TLS handshake from {from} failed: {e}"));
        }
        Err(_) => return say_refused(settings, &format!("TLS handshake from {from} timed out")),
    };
    if slot.is_none() {
        let certificate = stream.peer_certificate();
        let neighbor = |n: &Arc<str>| certificate.as_ref().is_some_and(|c| tls::certifies(c, n));
        if !settings.neighbors.iter().any(neighbor) {
            return;
        }
    }
    opening.start(stream, slot);
}

/// Answers the first line of a connection that speaks plain text to a TLS port as any
/// invalid line is answered, then closes it.
async fn refuse_plain_text(
    mut stream: TcpStream,
    settings: &SessionSettings,
    from: &str,
    port: Port,
) {
    let mut line = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        while line.len() < settings.max_line_bytes {
            match stream.read(&mut byte).await {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(HELLO_WAIT, read).await;
    let line = crate::line::without_cr(&line);
    let answer = protocol::invalid_answer(line);
    let _ = tokio::time::timeout(HELLO_WAIT, stream.write_all(answer.as_bytes())).await;
    let port = match port {
        Port::Links => "links' TLS port",
        Port::Clients => "TLS port for clients",
    };
    say_refused(
        settings,
        &format!(
            "plain text from {from} on the {port} refused: {}",
            answer.trim_end()
        ),
    );
}

/// Says a connection refused before it had a session, in the log and on standard error.
fn say_refused(settings: &SessionSettings, note: &str) {
    warn!(target: LOG_TARGET, "{}: {note}", settings.server);
    settings.log.note_as(NoteKind::Failure, None, note);
}

/// Warns of the server's certificate when it is near its end: at start, and once a day.
async fn watch_expiry(tls: CurrentTls, log: ServerLog, name: String) {
    loop {
        if let Some(warning) = tls.get().expiry_warning(SystemTime::now()) {
            warn!(target: LOG_TARGET, "{name}: {warning}");
            log.note_as(NoteKind::Failure, None, warning);
        }
        tokio::time::sleep(EXPIRY_CHECK_INTERVAL).await;
    }
}

/// Lets a connection that came past the cap on clients in as a link if its first line,
/// within [`HELLO_WAIT`], is a neighbor's hello; closes it otherwise.
async fn admit_link(stream: TcpStream, opening: Opening) {
    let hello = peek_hello(&stream, &opening.settings.neighbors);
    if let Ok(true) = tokio::time::timeout(HELLO_WAIT, hello).await {
        opening.start(Stream::Tcp(stream), None);
    }
}

/// Whether the first line waiting on `stream` is the hello of one of `neighbors`, looked
/// at without taking it (the session that starts on the stream reads it again).
async fn peek_hello(stream: &TcpStream, neighbors: &[Arc<str>]) -> bool {
    let mut buffer = [0u8; HELLO_PEEK_BYTES];
    loop {
        let Ok(n) = stream.peek(&mut buffer).await else {
            return false;
        };
        if let Some(end) = memchr::memchr(b'\n', &buffer[..n]) {
            return match Command::parse(crate::line::without_cr(&buffer[..end])) {
                Command::Hello(hello) => neighbors.iter().any(|n| **n == *hello.name),
                _ => false,
            };
        }
        if n == 0 || n == buffer.len() {
            return false;
        }
        // Part of a line: peeking again at once would find the same bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
