//! Starting one server of the herd, and stopping it cleanly.
//!
//! A node is its actors (one `LocationStore`, one `PlacesProxy`, a `PeerLink` per
//! neighbor), its log file, and an accept loop per listening address (the client address,
//! and the `peer_addr` if it has one) that starts a `ClientSession` per connection. Start-up takes an already bound
//! listener ([`Node::start_on`]) so tests can bind port 0 and start whole herds in one
//! process; [`Node::start`] binds the configured address first.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, warn};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::actors::client_session::{ClientSession, Drain, Services, SessionSettings};
use crate::actors::location_store::{LocationStore, Subscribe};
use crate::actors::peer_link::{Close, PeerLink};
use crate::actors::places_proxy::{ApiKey, PlacesProxy};
use crate::config::{ConfigError, HerdConfig};
use crate::server_log::{LogWriter, ServerLog};

/// The log target of start-up, accept and shutdown messages.
pub const LOG_TARGET: &str = "herd::node";

/// How long to wait after a failed accept (out of file descriptors, say) before the next,
/// so that the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
        let peer_listener = match node.peer_addr {
            Some(peer_addr) => {
                let ip = node.listen.map_or(peer_addr.ip(), |l| l.ip());
                let addr = SocketAddr::new(ip, peer_addr.port());
                let listener = std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|e| bind_error(addr, e))?;
                Some(listener)
            }
            None => None,
        };
        let peer_addr = peer_listener.as_ref().and_then(|l| l.local_addr().ok());
        let (log, log_writer) =
            ServerLog::open(&config.log.dir, name).map_err(|error| StartError::Log {
                name: name.to_owned(),
                dir: config.log.dir.clone(),
                error,
            })?;
        // awc's TLS needs a process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        log.note(None, format!("{name} listening on {client_addr}"));
        if let Some(peer_addr) = peer_addr {
            log.note(None, format!("{name} accepting herd links on {peer_addr}"));
        }
        if key.is_none() {
            log.note(None, "no places API key: WHATSAT answers REQUEST_DENIED");
        }

        let me: Arc<str> = Arc::from(name);
        let store = LocationStore::default().start();
        let mut links = Vec::new();
        for neighbor in config.neighbors(name) {
            let link = PeerLink::new(
                Arc::clone(&me),
                Arc::from(neighbor.name.as_str()),
                neighbor.peer_addr.unwrap_or(neighbor.addr),
                store.clone().recipient(),
                log.clone(),
            )
            .start();
            store.do_send(Subscribe {
                subscriber: link.clone().recipient(),
                neighbor: Arc::from(neighbor.name.as_str()),
            });
            links.push(link);
        }
        let places = PlacesProxy::new(config.places.clone(), key).start();
        let services = Services {
            store: store.clone().recipient(),
            lookup: store.clone().recipient(),
            places: places.recipient(),
        };
        let neighbors: Arc<[Arc<str>]> = config
            .neighbors(name)
            .map(|n| Arc::from(n.name.as_str()))
            .collect();
        let settings = SessionSettings {
            server: me,
            max_line_bytes: config.limits.max_line_bytes,
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
        let grace = config.places.timeout + SHUTDOWN_GRACE;
        let mut accepting = vec![actix_rt::spawn(accept(
            listener,
            settings.clone(),
            services.clone(),
            stopped.clone(),
            grace,
        ))];
        if let Some(peer_listener) = peer_listener {
            let settings = SessionSettings {
                neighbors,
                ..settings
            };
            accepting.push(actix_rt::spawn(accept(
                peer_listener,
                settings,
                services,
                stopped,
                grace,
            )));
        }
        debug!(target: LOG_TARGET, "{name} listening on {client_addr}");
        Ok(Node {
            name: name.to_owned(),
            client_addr,
            peer_addr,
            store,
            links,
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

    /// The server's location store (for tests).
    pub fn store(&self) -> &Addr<LocationStore> {
        &self.store
    }

    /// Opens the log file at its path again: after a rotation moved it away, the log goes
    /// on in a new file there.
    pub fn reopen_log(&self) {
        self.log_writer.reopen();
    }

    /// Stops accepting, lets every session deliver the answers it owes (within the places
    /// timeout and a second), closes the links, then flushes and closes the log.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for accepting in self.accepting {
            let _ = accepting.await;
        }
        for link in &self.links {
            let _ = link.send(Close).await;
        }
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

/// An accept loop, then, once told to stop, the draining of the sessions it started.
async fn accept(
    listener: TcpListener,
    settings: SessionSettings,
    services: Services,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut sessions: Vec<Addr<ClientSession>> = Vec::new();
    let mut prune_at = 64;
    // Accepts that failed in a row: the first and the recovery are said, not each retry.
    let mut failed = 0u64;
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if failed > 0 {
                        let note = format!("accepting again, after {failed} failed accepts");
                        info!(target: LOG_TARGET, "{}: {note}", settings.server);
                        settings.log.note(None, note);
                        failed = 0;
                    }
                    // Answers are written whole; Nagle would only delay them.
                    let _ = stream.set_nodelay(true);
                    let conn = settings.log.next_conn();
                    let session =
                        ClientSession::start(stream, conn, settings.clone(), services.clone());
                    sessions.push(session);
                    if sessions.len() >= prune_at {
                        sessions.retain(Addr::connected);
                        prune_at = (sessions.len() * 2).max(64);
                    }
                }
                Err(e) => {
                    // Out of file descriptors, say: the connections wait in the listen
                    // backlog, and are accepted in order once some close.
                    if failed == 0 {
                        let note = format!(
                            "accept failed: {e}; new connections wait, retried every {} ms",
                            ACCEPT_ERROR_PAUSE.as_millis()
                        );
                        warn!(target: LOG_TARGET, "{}: {note}", settings.server);
                        settings.log.note(None, note);
                    }
                    failed += 1;
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
    drop(listener);
    for session in &sessions {
        session.do_send(Drain);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while sessions.iter().any(Addr::connected) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
