//! A harness for end-to-end tests of whole herds, run in one process.
//!
//! - [`HerdBuilder`] builds a herd of any shape: it binds a listener on `127.0.0.1:0` for
//!   each server, writes a `herd.toml` for them (in a temporary directory, which also holds
//!   the log directory), loads it with `HerdConfig::load_with_env` (the process environment
//!   is not read) and starts every server with `Node::start_on`. The places API is a local
//!   `PlacesServer` answering `ZERO_RESULTS`, unless the builder is given another URL. A
//!   server can be advertised in the config at an address other than where it listens (a
//!   test proxy in front of it), given a `peer_addr`, or left to the test to play
//!   (configured but not started: the test's own listener sees its neighbors' links).
//! - [`Herd`] keeps the config, so that a stopped server can be started again with
//!   `Node::start` (which re-binds its configured port), and knows which servers are up.
//! - [`LineClient`] speaks the client protocol over one connection: one IAMAT and its AT
//!   answer, one WHATSAT and its answer up to the empty line, raw lines. Every read and
//!   write has a deadline ([`IO_TIMEOUT`]), so a server that hangs fails the test instead of
//!   blocking it.
//! - [`eventually`] (from the parent module) polls a check until it passes. Tests never
//!   assert how long anything took.
//! - [`StallProxy`] stands between a server and a neighbor and can stop reading (a
//!   neighbor that hangs); [`tcp_state`] reads a socket's state from `/proc/net/tcp`, to
//!   see whether a server closed a connection the other side does not read.
//!
//! Whether a server knows a client's record is asked the way a user would: WHATSAT on that
//! server, whose answer starts with the record's AT line (the JSON part does not matter),
//! while a client it has not heard of is answered `? WHATSAT ...`.
//!
//! Everything runs inside `#[actix_rt::test]`: the servers' actors and the test's clients
//! share the test's actix system.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd::actors::places_proxy::ApiKey;
use herd::config::HerdConfig;
use herd::node::{Node, StartError};
use places_fake::PlacesServer;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{API_KEY, IO_TIMEOUT, eventually, within};

/// How long [`Herd::eventually_all_know`] and friends wait for the herd to agree.
pub const EVENTUALLY: Duration = Duration::from_secs(10);

/// The places answer of the local places server: the JSON part of WHATSAT does not matter
/// to these tests.
pub const ZERO_RESULTS: &str = "{\"results\": [], \"status\": \"ZERO_RESULTS\"}";

/// The places timeout of every test herd, in milliseconds.
pub const PLACES_TIMEOUT_MS: u64 = 5000;

/// The five servers of the checked-in herd.toml.
pub const FIVE: [&str; 5] = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"];

/// The links of the checked-in herd.toml.
pub const FIVE_LINKS: [(&str, &str); 6] = [
    ("Clark", "Jaquez"),
    ("Clark", "Bona"),
    ("Bona", "Bailey"),
    ("Campbell", "Bailey"),
    ("Campbell", "Bona"),
    ("Campbell", "Jaquez"),
];

/// A position, as clients send it.
pub const KIWI_POSITION: &str = "+34.068930-118.445127";

/// Describes a herd to start.
pub struct HerdBuilder {
    names: Vec<String>,
    links: Vec<(String, String)>,
    advertised: HashMap<String, SocketAddr>,
    peer_addrs: HashMap<String, SocketAddr>,
    tls_addrs: HashMap<String, SocketAddr>,
    external: HashMap<String, SocketAddr>,
    places_url: Option<String>,
    sections: String,
    links_over: Links,
    admin: bool,
}

/// What a test herd's links run over: every end-to-end test of the links runs in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Plain TCP, on the client address.
    Plain,
    /// Mutual TLS on a `peer_addr` of each server, with certificates `herd certs` makes in
    /// the test's directory.
    Tls,
}

impl HerdBuilder {
    /// Servers `names`, linked by `links` (both ways).
    pub fn new(names: &[&str], links: &[(&str, &str)]) -> HerdBuilder {
        HerdBuilder {
            names: names.iter().map(|n| n.to_string()).collect(),
            links: links
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            advertised: HashMap::new(),
            peer_addrs: HashMap::new(),
            tls_addrs: HashMap::new(),
            external: HashMap::new(),
            places_url: None,
            sections: String::new(),
            links_over: Links::Plain,
            admin: false,
        }
    }

    /// The five-server herd of the checked-in herd.toml.
    pub fn five() -> HerdBuilder {
        Self::new(&FIVE, &FIVE_LINKS)
    }

    /// Writes `addr` as server `name`'s address in the config, while the server listens
    /// elsewhere (on a port of its own): its neighbors then dial `addr`, where a test proxy
    /// can stand. Such a server cannot be restarted with [`Herd::restart`].
    pub fn advertise(mut self, name: &str, addr: SocketAddr) -> HerdBuilder {
        self.advertised.insert(name.to_owned(), addr);
        self
    }

    /// Gives server `name` a `peer_addr` (herd links only), which the server binds itself.
    pub fn peer_addr(mut self, name: &str, addr: SocketAddr) -> HerdBuilder {
        self.peer_addrs.insert(name.to_owned(), addr);
        self
    }

    /// Gives server `name` a `tls_addr` (clients over TLS), which the server binds itself.
    pub fn tls_addr(mut self, name: &str, addr: SocketAddr) -> HerdBuilder {
        self.tls_addrs.insert(name.to_owned(), addr);
        self
    }

    /// Configures server `name` at `addr` but does not start it: the test plays that
    /// server itself (a listener of its own at `addr` sees the neighbors' links).
    pub fn external(mut self, name: &str, addr: SocketAddr) -> HerdBuilder {
        self.external.insert(name.to_owned(), addr);
        self
    }

    /// Points the herd's places URL somewhere else than a local `ZERO_RESULTS` server
    /// (for example the dummy `http://127.0.0.1:9/x`).
    pub fn places_url(mut self, url: &str) -> HerdBuilder {
        self.places_url = Some(url.to_owned());
        self
    }

    /// Gives every server an `admin_addr` (on a free port).
    pub fn admin(mut self) -> HerdBuilder {
        self.admin = true;
        self
    }

    /// Links over plain TCP or mutual TLS.
    pub fn links_over(mut self, links: Links) -> HerdBuilder {
        self.links_over = links;
        self
    }

    /// Adds TOML sections to the config (`"[limits]\nmax_clock_skew_s = 0"`).
    pub fn sections(mut self, toml: &str) -> HerdBuilder {
        self.sections.push_str(toml);
        self.sections.push('\n');
        self
    }

    /// Binds, configures and starts every server.
    pub async fn start(self) -> Herd {
        let places = match &self.places_url {
            Some(_) => None,
            None => Some(PlacesServer::always(ZERO_RESULTS).expect("start the places server")),
        };
        let places_url = match (&self.places_url, &places) {
            (Some(url), _) => url.clone(),
            (None, Some(server)) => server.url("/nearbysearch/json"),
            (None, None) => unreachable!(),
        };
        let mut listeners = Vec::new();
        for name in self
            .names
            .iter()
            .filter(|n| !self.external.contains_key(*n))
        {
            let listener = within(TcpListener::bind("127.0.0.1:0"), "bind 127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0");
            listeners.push((name.clone(), listener));
        }
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let log_dir = dir.path().join("logs");
        let quoted = |s: &str| format!("\"{s}\"");
        let links: Vec<String> = self
            .links
            .iter()
            .map(|(a, b)| format!("[{}, {}]", quoted(a), quoted(b)))
            .collect();
        // `links` is a top-level key: it must come before the first table. TOML literal
        // strings ('...') take the paths as they are.
        let mut toml = format!(
            "links = [{}]\n\n\
             [places]\n\
             api = \"legacy\"\n\
             url = '{places_url}'\n\
             timeout_ms = {PLACES_TIMEOUT_MS}\n\n\
             [log]\n\
             dir = '{}'\n\n\
             [store]\n\
             dir = '{}'\n",
            links.join(", "),
            log_dir.display(),
            dir.path().join("data").display(),
        );
        toml.push_str(&self.sections);
        let certs = dir.path().join("certs");
        if self.links_over == Links::Tls {
            let _ = write!(toml, "\n[tls]\ndir = '{}'\n", certs.display());
        }
        for (name, listener) in &listeners {
            let bound = listener.local_addr().expect("the listener's address");
            let addr = self.advertised.get(name).copied().unwrap_or(bound);
            let _ = write!(toml, "\n[[nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n");
            let peer = match (self.peer_addrs.get(name), self.links_over) {
                (Some(peer), _) => Some(*peer),
                // TLS links need a port of their own.
                (None, Links::Tls) => Some(SocketAddr::from(([127, 0, 0, 1], free_port()))),
                (None, Links::Plain) => None,
            };
            if let Some(peer) = peer {
                let _ = writeln!(toml, "peer_addr = \"{peer}\"");
            }
            if let Some(tls) = self.tls_addrs.get(name) {
                let _ = writeln!(toml, "tls_addr = \"{tls}\"");
            }
            if self.admin {
                let _ = writeln!(toml, "admin_addr = \"127.0.0.1:{}\"", free_port());
            }
        }
        for (name, addr) in &self.external {
            let _ = write!(toml, "\n[[nodes]]\nname = \"{name}\"\naddr = \"{addr}\"\n");
        }
        let path = dir.path().join("herd.toml");
        std::fs::write(&path, &toml).expect("write herd.toml");
        let config = HerdConfig::load_with_env(&path, Some(HashMap::new()))
            .unwrap_or_else(|e| panic!("the test herd's config is refused: {e}\n{toml}"));
        if self.links_over == Links::Tls {
            herd::certs::make(&config, &certs, &herd::certs::Options::default())
                .unwrap_or_else(|e| panic!("the test herd's certificates: {e}"));
        }
        let mut nodes = BTreeMap::new();
        let mut client_addrs = BTreeMap::new();
        for (name, listener) in listeners {
            let node = Node::start_on(&config, &name, listener, Some(ApiKey::new(API_KEY)))
                .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
            client_addrs.insert(name.clone(), node.client_addr());
            nodes.insert(name, Some(node));
        }
        Herd {
            config,
            dir,
            places,
            nodes,
            client_addrs,
            advertised: self.advertised,
        }
    }
}

/// A running herd. Servers left running when it is dropped stop with the test's system.
pub struct Herd {
    /// The loaded `herd.toml`, kept to restart servers.
    pub config: HerdConfig,
    /// Holds `herd.toml` and the log directory; removed when the herd is dropped.
    pub dir: TempDir,
    places: Option<PlacesServer>,
    nodes: BTreeMap<String, Option<Node>>,
    client_addrs: BTreeMap<String, SocketAddr>,
    advertised: HashMap<String, SocketAddr>,
}

impl Herd {
    /// The five-server herd of the checked-in herd.toml, started.
    pub async fn five() -> Herd {
        HerdBuilder::five().start().await
    }

    /// Every server's name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// The servers that are up, sorted.
    pub fn up(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Where clients reach server `name` (the same after a restart).
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .client_addrs
            .get(name)
            .unwrap_or_else(|| panic!("no server {name} in the test herd"))
    }

    /// Every server's client address.
    pub fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.client_addrs.clone()
    }

    /// Where server `name` answers HTTP (it was given an `admin_addr`).
    pub fn admin_addr(&self, name: &str) -> SocketAddr {
        self.config
            .node(name)
            .ok()
            .and_then(|n| n.admin_addr)
            .unwrap_or_else(|| panic!("{name} has no admin_addr"))
    }

    /// The running server `name`.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .get(name)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("{name} is not running"))
    }

    /// Where server `name` writes its log (read it after the server stopped: the log is
    /// flushed and closed then).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.config.log.dir.join(format!("{name}.log"))
    }

    /// The text of server `name`'s log file.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name))
            .unwrap_or_else(|e| panic!("read {name}'s log: {e}"))
    }

    /// Stops server `name` (it delivers the answers it owes, closes its links and its log).
    pub async fn stop(&mut self, name: &str) {
        let node = self
            .nodes
            .get_mut(name)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("{name} is not running"));
        within(node.stop(), &format!("stop {name}")).await;
    }

    /// Stops every server that is up.
    pub async fn stop_all(&mut self) {
        for name in self.up() {
            self.stop(&name).await;
        }
    }

    /// Starts the stopped server `name` again with `Node::start` on the same config, which
    /// binds its configured address again. The port may be briefly unavailable after a
    /// stop, so a failed bind is retried for a while.
    pub async fn restart(&mut self, name: &str) {
        assert!(
            !self.advertised.contains_key(name),
            "{name} listens elsewhere than its configured address: it cannot be restarted"
        );
        assert!(
            self.nodes.get(name).is_some_and(Option::is_none),
            "{name} is not a stopped server of this herd"
        );
        let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
        let node = loop {
            match Node::start(&self.config, name, Some(ApiKey::new(API_KEY))).await {
                Ok(node) => break node,
                Err(e @ StartError::Bind { .. }) if tokio::time::Instant::now() < deadline => {
                    eprintln!("restarting {name}: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{name} does not start again: {e}"),
            }
        };
        assert_eq!(node.client_addr(), self.addr(name), "{name} moved");
        self.nodes.insert(name.to_owned(), Some(node));
    }

    /// A new client connection to server `name`.
    pub async fn client(&self, name: &str) -> LineClient {
        LineClient::connect(self.addr(name))
            .await
            .unwrap_or_else(|e| panic!("connect to {name}: {e}"))
    }

    /// Sends one IAMAT to server `server` on a new connection and returns its AT answer
    /// (without the line ending), which must be the AT line of that IAMAT.
    pub async fn iamat(&self, server: &str, client: &str, position: &str, time: &str) -> String {
        self.client(server)
            .await
            .iamat(server, client, position, time)
            .await
    }

    /// The first line of server `server`'s WHATSAT answer for `client` (the record's AT
    /// line), or `None` when the server answers `? WHATSAT ...`, asked on a new connection.
    pub async fn whatsat(&self, server: &str, client: &str) -> io::Result<Option<String>> {
        let mut c = LineClient::connect(self.addr(server)).await?;
        c.whatsat(client).await
    }

    /// Waits until every server in `servers` answers WHATSAT for `client` with `line`.
    pub async fn eventually_know(&self, servers: &[&str], client: &str, line: &str) {
        let what = format!("{servers:?} all hold for {client:?} the record {line:?}");
        eventually(EVENTUALLY, &what, async || {
            for server in servers {
                let got = self.whatsat(server, client).await;
                if got.as_ref().ok().and_then(Option::as_deref) != Some(line) {
                    return Err(format!("{server} answers {got:?}"));
                }
            }
            Ok(())
        })
        .await;
    }

    /// Waits until every server that is up answers WHATSAT for `client` with `line`.
    pub async fn eventually_all_know(&self, client: &str, line: &str) {
        let up = self.up();
        let up: Vec<&str> = up.iter().map(String::as_str).collect();
        self.eventually_know(&up, client, line).await;
    }
}

/// One client connection speaking the line protocol.
pub struct LineClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl LineClient {
    /// Connects to `addr` (within [`IO_TIMEOUT`]).
    pub async fn connect(addr: SocketAddr) -> io::Result<LineClient> {
        let stream = timed(TcpStream::connect(addr)).await?;
        let _ = stream.set_nodelay(true);
        let (read, writer) = stream.into_split();
        Ok(LineClient {
            reader: BufReader::new(read),
            writer,
        })
    }

    /// A client over an already open connection (for example one a test listener
    /// accepted from a server's link).
    pub fn from_stream(stream: TcpStream) -> LineClient {
        let (read, writer) = stream.into_split();
        LineClient {
            reader: BufReader::new(read),
            writer,
        }
    }

    /// Accepts one connection on `listener` (within [`IO_TIMEOUT`]).
    pub async fn accept(listener: &TcpListener) -> io::Result<LineClient> {
        let (stream, _) = timed(listener.accept()).await?;
        Ok(LineClient::from_stream(stream))
    }

    /// Sends `text` as it is (line endings included by the caller).
    pub async fn send(&mut self, text: &str) -> io::Result<()> {
        timed(self.writer.write_all(text.as_bytes())).await
    }

    /// Reads one line and returns it without its `\n`; end of file is an error.
    pub async fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        let n = timed(self.reader.read_line(&mut line)).await?;
        if n == 0 || !line.ends_with('\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the server closed the connection (after {line:?})"),
            ));
        }
        line.pop();
        Ok(line)
    }

    /// Sends one IAMAT and reads its answer, without checking it.
    pub async fn try_iamat(
        &mut self,
        client: &str,
        position: &str,
        time: &str,
    ) -> io::Result<String> {
        self.send(&format!("IAMAT {client} {position} {time}\n"))
            .await?;
        self.read_line().await
    }

    /// Sends one IAMAT to server `server` and returns its answer, which must be the AT line
    /// of that IAMAT: `AT <server> <diff> <client> <position> <time>`.
    pub async fn iamat(
        &mut self,
        server: &str,
        client: &str,
        position: &str,
        time: &str,
    ) -> String {
        let answer = self
            .try_iamat(client, position, time)
            .await
            .unwrap_or_else(|e| panic!("IAMAT {client} at {server}: {e}"));
        assert_at_answer(&answer, server, client, position, time);
        answer
    }

    /// Sends WHATSAT for `client` (radius 10 km, 5 places) and reads the whole answer: the
    /// record's AT line (returned) and the JSON up to the empty line, or `None` when the
    /// answer is `? WHATSAT ...` (the server has not heard of the client).
    pub async fn whatsat(&mut self, client: &str) -> io::Result<Option<String>> {
        let line = format!("WHATSAT {client} 10 5");
        self.send(&format!("{line}\n")).await?;
        self.read_whatsat_answer(&line).await
    }

    /// Reads the answer of the WHATSAT `line` sent before.
    pub async fn read_whatsat_answer(&mut self, line: &str) -> io::Result<Option<String>> {
        let first = self.read_line().await?;
        if first == format!("? {line}") {
            return Ok(None);
        }
        if !first.starts_with("AT ") {
            return Err(io::Error::other(format!(
                "{line:?} answered {first:?}, neither an AT line nor a refusal"
            )));
        }
        loop {
            if self.read_line().await?.is_empty() {
                return Ok(Some(first));
            }
        }
    }

    /// Sends `text` (any number of lines) while reading `count` one-line answers, so that
    /// neither side waits for the other however long the text; returns the answers.
    pub async fn pipeline(&mut self, text: &str, count: usize) -> io::Result<Vec<String>> {
        let writer = &mut self.writer;
        let write = async move { timed(writer.write_all(text.as_bytes())).await };
        let reader = &mut self.reader;
        let read = async move {
            let mut answers = Vec::with_capacity(count);
            while answers.len() < count {
                let mut line = String::new();
                let n = timed(reader.read_line(&mut line)).await?;
                if n == 0 || !line.ends_with('\n') {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the server closed the connection after {} answers",
                            answers.len()
                        ),
                    ));
                }
                line.pop();
                answers.push(line);
            }
            Ok(answers)
        };
        let (written, answers) = tokio::join!(write, read);
        written?;
        answers
    }

    /// Closes the sending side and reads everything the server still sends until it closes.
    pub async fn finish(mut self) -> io::Result<String> {
        timed(self.writer.shutdown()).await?;
        let mut rest = String::new();
        timed(self.reader.read_to_string(&mut rest)).await?;
        Ok(rest)
    }
}

/// Checks that `answer` is the AT line of `IAMAT client position time` received by
/// `server`: the server's name, a signed difference with nine fraction digits, then the
/// client's three fields byte for byte.
pub fn assert_at_answer(answer: &str, server: &str, client: &str, position: &str, time: &str) {
    let ok = (|| {
        let rest = answer.strip_prefix(&format!("AT {server} "))?;
        let (diff, rest) = rest.split_once(' ')?;
        let digits = diff.strip_prefix(['+', '-'])?;
        let (int, frac) = digits.split_once('.')?;
        let well_formed = !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.len() == 9
            && frac.bytes().all(|b| b.is_ascii_digit());
        (well_formed && rest == format!("{client} {position} {time}")).then_some(())
    })();
    assert!(
        ok.is_some(),
        "IAMAT {client} {position} {time} at {server} was answered {answer:?}"
    );
}

/// The client time of an AT line (its last field) in nanoseconds, for the protocol's rule of which
/// record is newer. Fraction digits past the ninth do not count.
pub fn at_time_nanos(line: &str) -> u128 {
    let time = line.rsplit(' ').next().expect("an AT line has fields");
    let (secs, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut nanos: String = frac.chars().take(9).collect();
    while nanos.len() < 9 {
        nanos.push('0');
    }
    let secs: u128 = secs.parse().expect("whole seconds");
    let nanos: u128 = nanos.parse().expect("nanoseconds");
    secs * 1_000_000_000 + nanos
}

/// Of two AT lines of one client, the one the herd keeps: the greater client time,
/// then the bytewise greater line.
pub fn newer<'a>(a: &'a str, b: &'a str) -> &'a str {
    if (at_time_nanos(a), a.as_bytes()) >= (at_time_nanos(b), b.as_bytes()) {
        a
    } else {
        b
    }
}

/// Runs `future` with the deadline [`IO_TIMEOUT`]; a timeout is an error.
pub async fn timed<T>(future: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing within {IO_TIMEOUT:?}"),
        )),
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, read, released), for addresses a
/// server binds itself such as `peer_addr`.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("the listener's address")
        .port()
}

/// A TCP proxy in front of a server, for a neighbor that stops reading: it forwards both
/// ways until [`StallProxy::stall`], after which it reads nothing more from the dialling
/// side (on every connection, old and new) until [`StallProxy::resume`]. Its accepted
/// connections have a small receive buffer, so that what the proxy does not read backs up
/// into the dialling server rather than into the kernel.
pub struct StallProxy {
    addr: SocketAddr,
    target: tokio::sync::watch::Sender<Option<SocketAddr>>,
    flowing: tokio::sync::watch::Sender<bool>,
    accepted: std::rc::Rc<std::cell::RefCell<Vec<SocketAddr>>>,
    accepting: tokio::task::JoinHandle<()>,
}

/// The receive buffer asked for on the proxy's accepted connections.
const PROXY_RECV_BUFFER: u32 = 8 * 1024;

impl StallProxy {
    /// Starts a proxy on `127.0.0.1:0`; connections wait for [`StallProxy::forward_to`].
    pub fn start() -> StallProxy {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .set_recv_buffer_size(PROXY_RECV_BUFFER)
            .expect("set the receive buffer");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("bind 127.0.0.1:0");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("the proxy's address");
        let (target, target_rx) = tokio::sync::watch::channel(None);
        let (flowing, flowing_rx) = tokio::sync::watch::channel(true);
        let accepted = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let accepted_log = std::rc::Rc::clone(&accepted);
        let accepting = actix_rt::spawn(async move {
            while let Ok((stream, from)) = listener.accept().await {
                accepted_log.borrow_mut().push(from);
                actix_rt::spawn(proxy_connection(
                    stream,
                    target_rx.clone(),
                    flowing_rx.clone(),
                ));
            }
        });
        StallProxy {
            addr,
            target,
            flowing,
            accepted,
            accepting,
        }
    }

    /// Where the proxy listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the server the proxy forwards to.
    pub fn forward_to(&self, target: SocketAddr) {
        let _ = self.target.send(Some(target));
    }

    /// Stops reading from the dialling side of every connection.
    pub fn stall(&self) {
        let _ = self.flowing.send(false);
    }

    /// Reads and forwards again.
    pub fn resume(&self) {
        let _ = self.flowing.send(true);
    }

    /// The dialling side's address of every connection accepted so far, in order.
    pub fn accepted(&self) -> Vec<SocketAddr> {
        self.accepted.borrow().clone()
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn proxy_connection(
    inbound: TcpStream,
    mut target: tokio::sync::watch::Receiver<Option<SocketAddr>>,
    mut flowing: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(addr) = target.wait_for(Option::is_some).await.map(|t| t.unwrap()) else {
        return;
    };
    let Ok(outbound) = TcpStream::connect(addr).await else {
        return;
    };
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    actix_rt::spawn(async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
    });
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if flowing.wait_for(|f| *f).await.is_err() {
            return;
        }
        match in_read.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = out_write.shutdown().await;
                return;
            }
            Ok(n) => {
                if out_write.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The state of the TCP socket from `local` to `remote` as Linux reports it in
/// `/proc/net/tcp` (1 established, 4 FIN-WAIT-1, 8 CLOSE-WAIT, ...), or `None` if there is
/// no such socket (or no such file).
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    fn hex(addr: SocketAddr) -> Option<String> {
        match addr {
            SocketAddr::V4(a) => Some(format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            )),
            SocketAddr::V6(_) => None,
        }
    }
    let (local, remote) = (hex(local)?, hex(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| u8::from_str_radix(fields.get(3)?, 16).ok())
            .flatten()
    })
}

/// A seed for a test's random choices: `HERD_TEST_SEED` if set (to replay a run), else
/// one drawn from the clock. The test prints it.
pub fn seed() -> u64 {
    if let Some(seed) = std::env::var("HERD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as u64
}
