//! A server's admin listener (`admin_addr`): HTTP for the people and programs that watch a
//! herd. It reads the server's numbers ([`Metrics`]) and changes nothing in the herd; it
//! speaks neither the client nor the herd protocol.
//!
//! - `GET /metrics`: every number, in the Prometheus text format.
//! - `GET /health`: 200 and a small JSON body while the server accepts clients.
//! - `GET /status`: this server's [`ServerStatus`] as JSON.
//! - `GET /herd`: the status of every server of the config, as this server reaches their
//!   admin addresses (in parallel, each within [`PEER_STATUS_TIMEOUT`]), and the links:
//!   a [`HerdStatus`].
//! - `GET /`: a page for a person, drawing the herd from `/herd` every second
//!   (`page.html`, in the binary; nothing is fetched from elsewhere).
//!
//! It runs on actix-web in the server's own process and actix system, on one worker
//! thread of its own, so that a slow scrape never holds the thread that serves clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// How long `/herd` waits for another server's `/status`.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The page at `/`.
const PAGE: &str = include_str!("page.html");

/// One link, as its server sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkStatus {
    /// The neighbor.
    pub neighbor: String,
    /// `up` or `down`.
    pub state: String,
    /// When it went up or down (RFC 3339), if it ever did.
    pub since: Option<String>,
    /// Why it last went down.
    pub last_error: Option<String>,
}

/// The places proxy's numbers, as `/status` gives them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlacesStatus {
    /// Searches asked.
    pub searches: u64,
    /// Calls made to the places API.
    pub calls: u64,
    /// Searches answered from the cache.
    pub cache_hits: u64,
    /// Searches that joined a call under way.
    pub joined: u64,
}

/// What `/status` says of one server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServerStatus {
    /// The server's name.
    pub name: String,
    /// herd's version.
    pub version: String,
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Client connections held.
    pub clients: i64,
    /// Client records held.
    pub records: i64,
    /// IAMATs received since start (a rate comes from two readings).
    pub iamats: u64,
    /// The places proxy's numbers.
    pub places: PlacesStatus,
    /// Each link to a neighbor.
    pub links: Vec<LinkStatus>,
}

impl ServerStatus {
    /// The status of the server whose numbers are `metrics`.
    pub fn of(name: &str, metrics: &Metrics) -> ServerStatus {
        let links = metrics
            .links
            .iter()
            .map(|link| {
                let (up, since, last_error) = link.state();
                LinkStatus {
                    neighbor: link.neighbor.clone(),
                    state: if up { "up" } else { "down" }.to_owned(),
                    since: (since > 0).then(|| {
                        let at = UNIX_EPOCH + Duration::from_secs(since);
                        humantime::format_rfc3339_seconds(at).to_string()
                    }),
                    last_error,
                }
            })
            .collect();
        let places = &metrics.places;
        ServerStatus {
            name: name.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: metrics.uptime().as_secs_f64(),
            clients: metrics.clients.get(),
            records: metrics.records_held.get(),
            iamats: metrics.lines.iamat.get(),
            places: PlacesStatus {
                searches: places.searches.get(),
                calls: places.calls.get(),
                cache_hits: places.cache_hits.get(),
                joined: places.joined.get(),
            },
            links,
        }
    }

    /// How many of its links are up.
    pub fn links_up(&self) -> usize {
        self.links.iter().filter(|l| l.state == "up").count()
    }
}

/// One server of the herd, as `/herd` reaches it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HerdMember {
    /// Its name.
    pub name: String,
    /// Its admin address, if it has one.
    pub admin_addr: Option<SocketAddr>,
    /// Whether its `/status` answered.
    pub reachable: bool,
    /// Its status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ServerStatus>,
    /// Why it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `/herd` answers: every server of the config, and the links between them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HerdStatus {
    /// The server that asked.
    pub asked_by: String,
    /// Every server, in the config's order.
    pub servers: Vec<HerdMember>,
    /// The config's links.
    pub links: Vec<(String, String)>,
}

/// What the admin listener of one server needs.
#[derive(Clone)]
pub struct AdminState {
    /// The server's name.
    pub name: String,
    /// Its numbers.
    pub metrics: Arc<Metrics>,
    /// Every server of the config with its admin address, in order.
    pub servers: Arc<[(String, Option<SocketAddr>)]>,
    /// The config's links.
    pub links: Arc<[(String, String)]>,
}

/// Starts the admin listener on `listener`, on a worker thread of its own; the handle
/// stops it.
pub fn start(
    listener: std::net::TcpListener,
    state: AdminState,
) -> std::io::Result<actix_web::dev::ServerHandle> {
    let server = HttpServer::new(move || {
        // One client per worker for `/herd`'s calls, kept across requests: made anew for
        // each poll of the page it would build its TLS setup every second, and reuse no
        // connection.
        let peers = awc::Client::builder().timeout(PEER_STATUS_TIMEOUT).finish();
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(peers))
            .route("/", web::get().to(page))
            .route("/metrics", web::get().to(metrics))
            .route("/health", web::get().to(health))
            .route("/status", web::get().to(status))
            .route("/herd", web::get().to(herd))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Ok(handle)
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.encode())
}

async fn health(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "name": state.name }))
}

async fn status(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(ServerStatus::of(&state.name, &state.metrics))
}

async fn herd(state: web::Data<AdminState>, client: web::Data<awc::Client>) -> HttpResponse {
    let asks = state.servers.iter().map(|(name, admin_addr)| {
        let client = &client;
        let state = &state;
        async move {
            let asked = match admin_addr {
                _ if *name == state.name => Ok(ServerStatus::of(name, &state.metrics)),
                None => Err("no admin_addr in the config".to_owned()),
                Some(addr) => fetch_status(client, *addr).await,
            };
            match asked {
                Ok(status) => HerdMember {
                    name: name.clone(),
                    admin_addr: *admin_addr,
                    reachable: true,
                    status: Some(status),
                    error: None,
                },
                Err(error) => HerdMember {
                    name: name.clone(),
                    admin_addr: *admin_addr,
                    reachable: false,
                    status: None,
                    error: Some(error),
                },
            }
        }
    });
    let servers = futures_util::future::join_all(asks).await;
    HttpResponse::Ok().json(HerdStatus {
        asked_by: state.name.clone(),
        servers,
        links: state.links.to_vec(),
    })
}

/// Asks the admin listener at `addr` for its server's status.
pub async fn fetch_status(client: &awc::Client, addr: SocketAddr) -> Result<ServerStatus, String> {
    let mut response = client
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .map_err(|e| shorten(&e.to_string()))?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.json().await.map_err(|e| e.to_string())
}

/// The gist of a connection error ("Connection refused" rather than the whole chain).
fn shorten(error: &str) -> String {
    let gist = error.rsplit(": ").next().unwrap_or(error);
    gist.split(" (os error").next().unwrap_or(gist).to_owned()
}
