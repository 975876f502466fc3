//! Starting one server of the herd, and stopping it cleanly.
//!
//! A node is its actors (one `LocationStore`, one `PlacesProxy`), its log file and an accept
//! loop that starts a `ClientSession` per connection. Start-up takes an already bound
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
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::actors::client_session::{ClientSession, Drain, Services, SessionSettings};
use crate::actors::location_store::LocationStore;
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
    #[error("{name}: cannot listen on {addr}: {source}")]
    Bind {
        /// The server.
        name: String,
        /// The address it tried.
        addr: SocketAddr,
        /// Why not.
        source: io::Error,
    },
    /// The log file could not be opened.
    #[error("{name}: cannot open its log in {dir}: {source}")]
    Log {
        /// The server.
        name: String,
        /// The log directory.
        dir: PathBuf,
        /// Why not.
        source: io::Error,
    },
}

/// A running server. Dropping it leaves it running; [`Node::stop`] stops it.
pub struct Node {
    name: String,
    client_addr: SocketAddr,
    store: Addr<LocationStore>,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<()>,
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
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind {
                name: name.to_owned(),
                addr,
                source,
            })?;
        Self::start_on(config, name, listener, key)
    }

    /// Starts server `name` of `config` on an already bound listener.
    pub fn start_on(
        config: &HerdConfig,
        name: &str,
        listener: TcpListener,
        key: Option<ApiKey>,
    ) -> Result<Node, StartError> {
        let node = config.node(name)?;
        let client_addr = listener.local_addr().map_err(|source| StartError::Bind {
            name: name.to_owned(),
            addr: node.listen_addr(),
            source,
        })?;
        let (log, log_writer) =
            ServerLog::open(&config.log.dir, name).map_err(|source| StartError::Log {
                name: name.to_owned(),
                dir: config.log.dir.clone(),
                source,
            })?;
        // awc's TLS needs a process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
        log.note(None, format!("{name} listening on {client_addr}"));
        if key.is_none() {
            log.note(None, "no places API key: WHATSAT answers REQUEST_DENIED");
        }
        let store = LocationStore::default().start();
        let places =
            PlacesProxy::new(config.places.url.clone(), config.places.timeout, key).start();
        let services = Services {
            store: store.clone().recipient(),
            lookup: store.clone().recipient(),
            places: places.recipient(),
        };
        let settings = SessionSettings {
            server: Arc::from(name),
            max_line_bytes: config.limits.max_line_bytes,
            log,
        };
        let (stop, stopped) = oneshot::channel();
        let grace = config.places.timeout + SHUTDOWN_GRACE;
        let serving = actix_rt::spawn(serve(
            listener, settings, services, stopped, log_writer, grace,
        ));
        debug!(target: LOG_TARGET, "{name} listening on {client_addr}");
        Ok(Node {
            name: name.to_owned(),
            client_addr,
            store,
            stop,
            serving,
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

    /// The server's location store (for the herd links, and for tests).
    pub fn store(&self) -> &Addr<LocationStore> {
        &self.store
    }

    /// Stops accepting, lets every session deliver the answers it owes (within the places
    /// timeout and a second), then flushes and closes the log.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
        info!(target: LOG_TARGET, "{} stopped", self.name);
    }
}

/// The accept loop, then the orderly end of a server.
async fn serve(
    listener: TcpListener,
    settings: SessionSettings,
    services: Services,
    mut stopped: oneshot::Receiver<()>,
    log_writer: LogWriter,
    grace: Duration,
) {
    let mut sessions: Vec<Addr<ClientSession>> = Vec::new();
    let mut prune_at = 64;
    let mut next_conn = 0;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    next_conn += 1;
                    // Answers are written whole; Nagle would only delay them.
                    let _ = stream.set_nodelay(true);
                    sessions.push(ClientSession::start(stream, next_conn, settings.clone(), services.clone()));
                    if sessions.len() >= prune_at {
                        sessions.retain(Addr::connected);
                        prune_at = (sessions.len() * 2).max(64);
                    }
                }
                Err(e) => {
                    warn!(target: LOG_TARGET, "{}: accept failed: {e}", settings.server);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
    drop(listener);
    settings
        .log
        .note(None, "stopping: draining client sessions");
    for session in &sessions {
        session.do_send(Drain);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while sessions.iter().any(Addr::connected) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settings.log.note(None, "stopped");
    log_writer.close();
}
