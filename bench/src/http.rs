//! The local places server `herd-bench whatsat` starts, and the client that calls it
//! directly for the baseline.
//!
//! The server is a tiny HTTP/1.1 responder on a fixed address (so a herd server can be
//! started with its URL before the benchmark runs): on its own thread and runtime, it
//! answers every request with the same prepared response (one write, keep-alive, pipelined
//! requests answered in order) and counts them. The client sends one GET at a time on one
//! keep-alive connection and reads the whole response (`Content-Length` framing, which is
//! all the server ever sends).
//!
//! It is not the tests' `places-fake` (hyper's server), on purpose: the direct GETs are the
//! baseline the herd's latency is measured against, so the places server must cost as
//! little as it can. `places-fake` parses each request fully and keeps every request it
//! gets (for the tests to look at), which shows in a baseline measured against it: a few
//! microseconds more per call, and memory growing with the run.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// The path the places server answers (it answers any path the same way).
pub const PLACES_PATH: &str = "/nearbysearch/json";

/// The largest request or response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The largest response body the client accepts.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A running local places server. Stops when dropped.
#[derive(Debug)]
pub struct PlacesResponder {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PlacesResponder {
    /// Listens on `addr` and answers every request `200 OK` with the JSON `body`.
    pub fn start(addr: &str, body: &str) -> anyhow::Result<PlacesResponder> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("places server: cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let response: Arc<[u8]> = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
        .into();
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("places server: cannot start a runtime")?;
        let thread = std::thread::Builder::new()
            .name("bench-places".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, response, counted) => {}
                    }
                });
            })
            .context("places server: cannot start its thread")?;
        Ok(PlacesResponder {
            addr,
            requests,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give a herd server (`HERD_PLACES__URL`).
    pub fn url(&self) -> String {
        format!("http://{}{PLACES_PATH}", self.addr)
    }

    /// How many requests it has answered.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for PlacesResponder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, response: Arc<[u8]>, requests: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (response, requests) = (Arc::clone(&response), Arc::clone(&requests));
        tokio::spawn(async move {
            let _ = serve(stream, &response, &requests).await;
        });
    }
}

/// Answers the requests of one connection until it closes (or asks to).
async fn serve(mut stream: TcpStream, response: &[u8], requests: &AtomicU64) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut tail = 0;
    let mut out = Vec::new();
    loop {
        let mut used = 0;
        let mut close = false;
        while let Some(request) = complete(&buf[used..tail]) {
            used += request.length;
            close |= request.close;
            out.extend_from_slice(response);
            requests.fetch_add(1, Ordering::Relaxed);
            if close {
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        buf.copy_within(used..tail, 0);
        tail -= used;
        if tail == buf.len() {
            if buf.len() >= MAX_HEAD * 4 {
                return Err(io::Error::other("request too large"));
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[tail..]).await?;
        if n == 0 {
            return Ok(());
        }
        tail += n;
    }
}

/// A whole request at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Complete {
    /// Its length, head and body.
    length: usize,
    /// It asked to close the connection after the answer.
    close: bool,
}

/// The request at the start of `buf`, if it is all there.
fn complete(buf: &[u8]) -> Option<Complete> {
    let head_end = memmem::find(buf, b"\r\n\r\n")?;
    let head = Head::parse(&buf[..head_end]);
    let length = head_end + 4 + head.content_length.unwrap_or(0);
    (buf.len() >= length).then_some(Complete {
        length,
        close: head.close,
    })
}

/// What matters of a request or response head.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    /// A response's status code (the second word of its status line).
    status: Option<u16>,
    /// The body's length, if given.
    content_length: Option<usize>,
    /// `Connection: close`.
    close: bool,
}

impl Head {
    fn parse(head: &[u8]) -> Head {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|first| first.split(' ').nth(1))
            .and_then(|code| code.parse().ok());
        let mut parsed = Head {
            status,
            ..Head::default()
        };
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                parsed.content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                parsed.close = value.eq_ignore_ascii_case("close");
            }
        }
        parsed
    }
}

/// One keep-alive connection that GETs the same URL again and again.
#[derive(Debug)]
pub struct HttpClient {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
    tail: usize,
}

impl HttpClient {
    /// Connects to `addr`, to GET `target` (path and query).
    pub async fn connect(addr: SocketAddr, target: &str) -> io::Result<HttpClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
        Ok(HttpClient {
            stream,
            request: request.into_bytes(),
            buf: vec![0; 16 * 1024],
            tail: 0,
        })
    }

    /// Sends the GET and reads the whole response; returns its status code.
    pub async fn get(&mut self) -> io::Result<u16> {
        self.stream.write_all(&self.request).await?;
        let (head_end, head) = loop {
            if let Some(end) = memmem::find(&self.buf[..self.tail], b"\r\n\r\n") {
                break (end, Head::parse(&self.buf[..end]));
            }
            if self.tail >= MAX_HEAD {
                return Err(io::Error::other("response head too long"));
            }
            self.fill().await?;
        };
        let length = head
            .content_length
            .ok_or_else(|| io::Error::other("response without Content-Length"))?;
        if length > MAX_BODY {
            return Err(io::Error::other("response body too large"));
        }
        let total = head_end + 4 + length;
        while self.tail < total {
            self.fill().await?;
        }
        self.buf.copy_within(total..self.tail, 0);
        self.tail -= total;
        head.status
            .ok_or_else(|| io::Error::other("response without a status code"))
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.tail == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.tail..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the places server closed the connection",
            ));
        }
        self.tail += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_cut_by_their_heads_and_lengths() {
        let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc";
        let first = complete(two).expect("the first");
        assert_eq!(
            first,
            Complete {
                length: 28,
                close: false
            }
        );
        let second = complete(&two[first.length..]).expect("the second");
        assert_eq!(second.length, two.len() - first.length);
        assert!(second.close);
        assert_eq!(complete(&two[..two.len() - 1][first.length..]), None);
        assert_eq!(complete(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn a_status_line_gives_its_code() {
        let head = Head::parse(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0");
        assert_eq!(head.status, Some(404));
        assert_eq!(head.content_length, Some(0));
    }

    #[test]
    fn the_client_gets_what_the_server_serves() {
        let places = PlacesResponder::start("127.0.0.1:0", "{\"status\": \"OK\"}").expect("start");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let statuses = runtime.block_on(async {
            let mut client = HttpClient::connect(places.addr(), "/nearbysearch/json?x=1")
                .await
                .expect("connect");
            let mut statuses = Vec::new();
            for _ in 0..3 {
                statuses.push(client.get().await.expect("get"));
            }
            statuses
        });
        assert_eq!(statuses, [200, 200, 200]);
        assert_eq!(places.requests(), 3);
        assert!(places.url().ends_with(PLACES_PATH));
    }
}
