//! A small local HTTP server that plays the places API, for tests and for trying WHATSAT.
//!
//! The herd must never reach the internet in tests, yet WHATSAT must be exercised against a
//! real HTTP server speaking the API's format. This one is hyper's HTTP/1.1 server on its
//! own thread (its own tokio runtime): it answers each request with whatever its responder
//! returns (now, after a delay, when the test lets go, or with a body that is not what the
//! API sends), keeps connections alive as Google's servers do, and records every request
//! it gets, so a test can check what the herd sent and how many calls and connections it
//! made, and how many calls were under way at once.
//!
//! The crate's binary, `places-fake`, runs one on a fixed address ([`PlacesServer::serve`])
//! with recorded answers of Google's, so that a herd can answer WHATSAT without Google.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// One HTTP request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query, as sent (`/nearby?location=...`).
    pub target: String,
    /// Header names (lower-cased) and values, each name's values together in the order
    /// they came.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of query parameter `name`, undecoded.
    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// What the server does with a request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this HTTP status and JSON body (a status that is not a valid code, such
    /// as 42, is answered 500).
    Json(u16, String),
    /// Answer with this body, labelled as HTML (for "body is not JSON").
    Html(u16, String),
    /// Wait, then reply.
    After(Duration, Box<Reply>),
    /// Wait until the test lets go (sends `true` on the channel), then reply: a call held
    /// open for as long as the test needs, not for a time it guesses.
    Held(watch::Receiver<bool>, Box<Reply>),
}

type Responder = dyn Fn(&Request) -> Reply + Send + Sync;

/// What the server's thread shares with the test's.
struct Shared {
    responder: Box<Responder>,
    /// Whether requests are kept (a test's server) or only answered (a long-running one).
    keep_requests: bool,
    /// Every request received, in order, if they are kept.
    requests: Mutex<Vec<Request>>,
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Requests being answered now.
    now: AtomicUsize,
    /// The most requests there ever were being answered at once.
    most: AtomicUsize,
}

/// A running fake places API. Stops when dropped.
pub struct PlacesServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PlacesServer {
    /// Starts a server on `127.0.0.1:0` that answers every request with `responder`, and
    /// keeps every request for [`PlacesServer::requests`].
    pub fn start(
        responder: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> io::Result<PlacesServer> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::launch(any_port, true, Box::new(responder))
    }

    /// Starts a server on `addr` that answers every request with `responder`, for as long as
    /// it runs: requests are answered but not kept (a server that runs for days would
    /// otherwise grow without end), so [`PlacesServer::requests`] stays empty.
    pub fn serve(
        addr: SocketAddr,
        responder: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> io::Result<PlacesServer> {
        Self::launch(addr, false, Box::new(responder))
    }

    fn launch(
        addr: SocketAddr,
        keep_requests: bool,
        responder: Box<Responder>,
    ) -> io::Result<PlacesServer> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared {
            responder,
            keep_requests,
            requests: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let served = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("places-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, served) => {}
                    }
                });
                // The runtime drops here, and with it every connection still open.
            })?;
        Ok(PlacesServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// A server that answers every request `200 OK` with `json`.
    pub fn always(json: impl Into<String>) -> io::Result<PlacesServer> {
        let json = json.into();
        Self::start(move |_| Reply::Json(200, json.clone()))
    }

    /// The address the server listens on (with the port it was given, when asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `path` on this server (`http://127.0.0.1:PORT/path`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, in order (none for a server started with
    /// [`PlacesServer::serve`], which keeps none).
    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many TCP connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at the same time.
    pub fn most_at_once(&self) -> usize {
        self.shared.most.load(Ordering::SeqCst)
    }
}

impl Drop for PlacesServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections and serves each with hyper's HTTP/1.1 server (keep-alive on).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(Arc::clone(&shared), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Records `request`, then answers it as the responder says.
async fn answer(
    shared: Arc<Shared>,
    request: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (head, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let request = Request {
        method: head.method.to_string(),
        target: head
            .uri
            .path_and_query()
            .map_or_else(|| head.uri.to_string(), |target| target.to_string()),
        headers: head
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body: body.to_vec(),
    };
    let _answering = Answering::new(&shared);
    let mut reply = (shared.responder)(&request);
    if shared.keep_requests {
        shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
    }
    let (status, kind, body) = loop {
        match reply {
            Reply::After(delay, next) => {
                tokio::time::sleep(delay).await;
                reply = *next;
            }
            Reply::Held(mut released, next) => {
                // A dropped sender lets go too, rather than hold the call forever.
                let _ = released.wait_for(|released| *released).await;
                reply = *next;
            }
            Reply::Json(status, body) => break (status, "application/json; charset=UTF-8", body),
            Reply::Html(status, body) => break (status, "text/html", body),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(response)
}

/// A request counted as being answered from its creation until it is dropped (answered,
/// or given up with its connection).
struct Answering<'a>(&'a Shared);

impl<'a> Answering<'a> {
    fn new(shared: &'a Shared) -> Answering<'a> {
        let now = shared.now.fetch_add(1, Ordering::SeqCst) + 1;
        shared.most.fetch_max(now, Ordering::SeqCst);
        Answering(shared)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    /// Sends `raw` on a new connection and reads until the server closes it.
    fn exchange(server: &PlacesServer, raw: &str) -> String {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn requests_are_recorded_and_answered_on_one_kept_alive_connection() {
        let server = PlacesServer::start(|request| match request.query("radius") {
            Some("1") => Reply::Json(200, "{\"status\":\"OK\"}".into()),
            _ => Reply::Html(404, "<html>".into()),
        })
        .unwrap();
        let answer = exchange(
            &server,
            "GET /nearby?location=1,2&radius=1 HTTP/1.1\r\nHost: x\r\nX-Key: k\r\n\r\n\
             POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        );
        let (first, second) = answer.split_once("{\"status\":\"OK\"}").unwrap();
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            first
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{answer}"
        );
        assert!(second.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        assert!(second.ends_with("<html>"), "{answer}");

        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, "GET");
        assert_eq!(requests[0].target, "/nearby?location=1,2&radius=1");
        assert_eq!(requests[0].query("location"), Some("1,2"));
        assert!(
            requests[0]
                .headers
                .contains(&("x-key".to_owned(), "k".to_owned())),
            "{:?}",
            requests[0].headers
        );
        assert_eq!(
            (requests[1].method.as_str(), &requests[1].body[..]),
            ("POST", &b"abc"[..])
        );
        assert_eq!(server.connections(), 1);
        assert_eq!(server.most_at_once(), 1);
    }

    #[test]
    fn held_calls_are_counted_at_once_and_answered_when_let_go() {
        let (release, released) = watch::channel(false);
        let server = PlacesServer::start(move |_| {
            Reply::Held(released.clone(), Box::new(Reply::Json(200, "{}".into())))
        })
        .unwrap();
        let addr = server.addr;
        let calls: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .unwrap();
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer).unwrap();
                    answer
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while server.requests().len() < 3 {
            assert!(std::time::Instant::now() < deadline, "three calls held");
            std::thread::sleep(Duration::from_millis(5));
        }
        release.send(true).unwrap();
        for call in calls {
            assert!(call.join().unwrap().starts_with("HTTP/1.1 200 OK\r\n"));
        }
        assert_eq!(server.most_at_once(), 3);
        assert_eq!(server.connections(), 3);
    }

    #[test]
    fn a_served_server_listens_where_told_and_keeps_no_requests() {
        // Port 0, so that the test never collides with a port in use.
        let server = PlacesServer::serve(SocketAddr::from(([127, 0, 0, 1], 0)), |_| {
            Reply::Json(200, "{\"status\":\"OK\"}".into())
        })
        .unwrap();
        assert!(server.addr().ip().is_loopback() && server.addr().port() != 0);
        let answer = exchange(
            &server,
            "GET /any/path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("{\"status\":\"OK\"}"), "{answer}");
        assert!(server.requests().is_empty());
        assert_eq!(server.connections(), 1);
        let busy = PlacesServer::serve(server.addr(), |_| Reply::Json(200, "{}".into()));
        assert!(busy.is_err(), "the address is taken");
    }

    #[test]
    fn a_dropped_server_refuses_connections() {
        let server = PlacesServer::always("{}").unwrap();
        let addr = server.addr;
        drop(server);
        assert!(TcpStream::connect(addr).is_err());
    }
}
