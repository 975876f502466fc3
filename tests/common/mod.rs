//! The harness of the end-to-end tests: real servers over real TCP, every wait bounded.
//!
//! - One server: a test (inside `#[actix_rt::test]`) starts a real one-node herd in-process
//!   on port 0 ([`TestNode::start`]), talks to it over raw TCP with a [`Client`], and reads
//!   the server's log file after [`TestNode::stop`]. The places API is played by
//!   `places_fake::PlacesServer` (the `places-fake` crate), whose URL is handed to
//!   [`TestNode::start`].
//! - Whole herds of any shape, servers stopped and restarted: [`herds`].
//! - The `herd` binary itself, for the tests of its command line: [`process`].
//!
//! Every read has a deadline ([`IO_TIMEOUT`], [`within`]), so a server that hangs fails the
//! test instead of blocking it forever; [`eventually`] polls a check instead of sleeping.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herd::actors::places_proxy::ApiKey;
use herd::config::HerdConfig;
use herd::node::Node;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod herds;
pub mod process;

/// The name of the one server of the test herd.
pub const SERVER: &str = "Clark";

/// The places API key the test server gets (see [`TestNode::start`]).
pub const API_KEY: &str = "test-key";

/// The longest any read or wait of a test may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`eventually`] checks.
pub const POLL: Duration = Duration::from_millis(10);

/// The places timeout of a server started with [`TestNode::start`].
pub const PLACES_TIMEOUT: Duration = Duration::from_secs(5);

/// The line limit of a server started with [`TestNode::start`] (the default).
pub const MAX_LINE_BYTES: usize = 8192;

/// Builds the config of a one-node herd (server [`SERVER`]) that calls the places API at
/// `places_url`, and returns it with the temporary directory that holds its `herd.toml` and
/// its log directory (keep the directory alive as long as the server runs).
///
/// The process environment is not read, so tests cannot disturb each other through it.
pub fn one_node_config(
    places_url: &str,
    timeout: Duration,
    max_line_bytes: usize,
) -> (HerdConfig, TempDir) {
    let places = format!("api = \"legacy\"\nurl = '{places_url}'");
    one_node_config_with(&places, timeout, max_line_bytes)
}

/// As [`one_node_config`], with the `[places]` settings other than the timeout given as
/// TOML lines (`api = "new"`, `url = '...'`, `cache_ttl_s = 0`, ...).
pub fn one_node_config_with(
    places: &str,
    timeout: Duration,
    max_line_bytes: usize,
) -> (HerdConfig, TempDir) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let log_dir = dir.path().join("logs");
    // TOML literal strings ('...') take the path as it is, backslashes included.
    let toml = format!(
        "[places]\n\
         {places}\n\
         timeout_ms = {timeout_ms}\n\
         \n\
         [log]\n\
         dir = '{log_dir}'\n\
         \n\
         [store]\n\
         dir = '{store_dir}'\n\
         \n\
         [limits]\n\
         max_line_bytes = {max_line_bytes}\n\
         \n\
         [[nodes]]\n\
         name = \"{SERVER}\"\n\
         addr = \"127.0.0.1:10003\"\n",
        timeout_ms = timeout.as_millis(),
        log_dir = log_dir.display(),
        store_dir = dir.path().join("data").display(),
    );
    let path = dir.path().join("herd.toml");
    std::fs::write(&path, toml).expect("write herd.toml");
    let config = HerdConfig::load_with_env(&path, Some(HashMap::new())).expect("a valid config");
    (config, dir)
}

/// A server of a one-node herd, running in this test's actix system.
pub struct TestNode {
    /// The running server.
    pub node: Node,
    /// The directory of its config and log; removed when the test ends.
    pub dir: TempDir,
    /// The address clients connect to.
    pub addr: SocketAddr,
    /// Where the server writes its log file.
    pub log_path: PathBuf,
}

impl TestNode {
    /// Starts a server with the places API at `places_url`, the default places timeout
    /// ([`PLACES_TIMEOUT`]) and line limit ([`MAX_LINE_BYTES`]), and the key [`API_KEY`].
    pub async fn start(places_url: &str) -> TestNode {
        let key = Some(ApiKey::new(API_KEY));
        Self::start_with(places_url, PLACES_TIMEOUT, MAX_LINE_BYTES, key).await
    }

    /// Starts a server on `127.0.0.1:0` with the given places URL, places timeout, line
    /// limit and API key (`None`: the server has no key).
    pub async fn start_with(
        places_url: &str,
        timeout: Duration,
        max_line_bytes: usize,
        key: Option<ApiKey>,
    ) -> TestNode {
        let (config, dir) = one_node_config(places_url, timeout, max_line_bytes);
        Self::start_config(config, dir, key).await
    }

    /// Starts the server of a config made by [`one_node_config_with`].
    pub async fn start_config(config: HerdConfig, dir: TempDir, key: Option<ApiKey>) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let node = Node::start_on(&config, SERVER, listener, key).expect("the server starts");
        let log_path = config.log.dir.join(format!("{SERVER}.log"));
        TestNode {
            node,
            dir,
            addr,
            log_path,
        }
    }

    /// Opens a new client connection to the server.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Stops the server (which delivers the answers in flight and flushes its log) and
    /// returns the text of its log file.
    pub async fn stop(self) -> String {
        self.node.stop().await;
        std::fs::read_to_string(&self.log_path).expect("the server's log file")
    }
}

/// A client of the line protocol over one TCP connection.
///
/// Bytes read past the answer asked for are kept for the next read.
pub struct Client {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = within(TcpStream::connect(addr), "connect")
            .await
            .expect("connect to the server");
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    /// Sends `bytes` as they are (add the line endings yourself).
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        within(self.stream.write_all(bytes.as_ref()), "send")
            .await
            .expect("send to the server");
    }

    /// Sends `line` with a `\n` ending and reads its one-line answer.
    pub async fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n")).await;
        self.read_line().await
    }

    /// Closes the sending side (half-close): the server sees the end of the client's lines.
    pub async fn half_close(&mut self) {
        within(self.stream.shutdown(), "half-close")
            .await
            .expect("half-close");
    }

    /// Reads one answer line, with its `\n`.
    pub async fn read_line(&mut self) -> String {
        self.read_through(b"\n").await
    }

    /// Reads one WHATSAT answer: through the empty line that ends it (`\n\n`).
    pub async fn read_whatsat(&mut self) -> String {
        self.read_through(b"\n\n").await
    }

    /// Reads everything until the server closes the connection.
    pub async fn read_to_end(&mut self) -> String {
        let mut all = std::mem::take(&mut self.pending);
        within(self.stream.read_to_end(&mut all), "read to the end")
            .await
            .expect("read from the server");
        utf8(all)
    }

    /// Reads until `end` has arrived, and returns the bytes up to and including it.
    async fn read_through(&mut self, end: &[u8]) -> String {
        loop {
            if let Some(i) = self.pending.windows(end.len()).position(|w| w == end) {
                let rest = self.pending.split_off(i + end.len());
                return utf8(std::mem::replace(&mut self.pending, rest));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = within(self.stream.read(&mut chunk), "read an answer")
                .await
                .expect("read from the server");
            assert!(
                n > 0,
                "the server closed the connection before the answer ended; got {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Every answer of the server is UTF-8 (bytes that are not are answered as U+FFFD).
fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("an answer is not UTF-8: {e}"))
}

/// Runs `future` with the deadline [`IO_TIMEOUT`]; panics naming `what` if it passes.
pub async fn within<F: std::future::Future>(future: F, what: &str) -> F::Output {
    tokio::time::timeout(IO_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {IO_TIMEOUT:?}"))
}

/// Polls `check` every [`POLL`] until it returns `Ok`; panics with `what` and the check's
/// last complaint if it has not after `timeout`.
pub async fn eventually(
    timeout: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let complaint = match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(())) => return,
            Ok(Err(complaint)) => complaint,
            Err(_) => "the last check itself did not finish in time".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("not within {timeout:?}: {what}; last: {complaint}");
        }
        tokio::time::sleep(POLL).await;
    }
}
