//! A small local HTTP server that plays the places API, for tests.
//!
//! The herd must never reach the internet in tests, yet WHATSAT must be exercised against a
//! real HTTP server speaking the API's format. This one runs on its own thread (its own
//! tokio runtime), answers each request with whatever its responder returns, keeps
//! connections alive as Google's servers do, and records every request it gets, so a test
//! can check what the herd sent and how many calls and connections it made.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// The largest request head accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One HTTP request as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query, as sent (`/nearby?location=...`).
    pub target: String,
    /// Header names (lower-cased) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
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
    /// Answer with this HTTP status and JSON body.
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

/// Requests being answered now, and the most there ever were at once.
#[derive(Default)]
struct Load {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// A running fake places API. Stops when dropped.
pub struct PlacesServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    load: Arc<Load>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PlacesServer {
    /// Starts a server on `127.0.0.1:0` that answers every request with `responder`.
    pub fn start(
        responder: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> io::Result<PlacesServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let load = Arc::new(Load::default());
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let responder: Arc<Responder> = Arc::new(responder);
        let (reqs, conns, thread_load) = (
            Arc::clone(&requests),
            Arc::clone(&connections),
            Arc::clone(&load),
        );
        let thread = std::thread::Builder::new()
            .name("places-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, responder, reqs, conns, thread_load) => {}
                    }
                });
            })?;
        Ok(PlacesServer {
            addr,
            requests,
            connections,
            load,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// A server that answers every request `200 OK` with `json`.
    pub fn always(json: impl Into<String>) -> io::Result<PlacesServer> {
        let json = json.into();
        Self::start(move |_| Reply::Json(200, json.clone()))
    }

    /// The URL of `path` on this server (`http://127.0.0.1:PORT/path`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many TCP connections were accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at the same time.
    pub fn most_at_once(&self) -> usize {
        self.load.most.load(Ordering::SeqCst)
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

async fn accept_loop(
    listener: TcpListener,
    responder: Arc<Responder>,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    load: Arc<Load>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        connections.fetch_add(1, Ordering::SeqCst);
        let (responder, requests) = (Arc::clone(&responder), Arc::clone(&requests));
        let load = Arc::clone(&load);
        tokio::spawn(async move {
            let _ = serve(stream, responder, requests, load).await;
        });
    }
}

async fn serve(
    mut stream: TcpStream,
    responder: Arc<Responder>,
    requests: Arc<Mutex<Vec<Request>>>,
    load: Arc<Load>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let close = request
            .headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        let now = load.now.fetch_add(1, Ordering::SeqCst) + 1;
        load.most.fetch_max(now, Ordering::SeqCst);
        let mut reply = responder(&request);
        requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
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
                Reply::Json(status, body) => {
                    break (status, "application/json; charset=UTF-8", body);
                }
                Reply::Html(status, body) => break (status, "text/html", body),
            }
        };
        load.now.fetch_sub(1, Ordering::SeqCst);
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
            reason(status),
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads one request; `None` at a clean end of the connection.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(io::Error::other("request head too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    buf.drain(..head_end + 4);
    while buf.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..length).collect();
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
