//! End-to-end tests of `[log] lines`: what a server's log keeps at each level, read from its
//! file after it stopped (docs/OPERATIONS.md, "Logs").

mod common;

use common::{MAX_LINE_BYTES, PLACES_TIMEOUT, TestNode, one_node_config};
use herd::server_log::LogLines;

/// An address where no places API answers: the lines sent here never call it.
const NO_PLACES: &str = "http://127.0.0.1:9/nowhere";

/// A valid IAMAT, its time a fixed one in the past (within any clock skew bound).
const IAMAT: &str = "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503";

/// The log of the client's invalid lines, their answers and its leaving, as every level
/// but `none` keeps them.
const INVALID_LINES_AND_CLOSE: [&str; 5] = [
    "< bogus line",
    "> ? bogus line",
    "< WHATSAT nobody.example.org 10 5",
    "> ? WHATSAT nobody.example.org 10 5",
    "- closed",
];

/// What one client did, and what the server's log says once it stopped.
struct Logged {
    /// The log's lines, without their stamps.
    lines: Vec<String>,
    /// The whole log, for failure messages.
    text: String,
}

impl Logged {
    /// The lines of connection 1, the client's, without the `conn 1 ` prefix.
    fn client(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix("conn 1 "))
            .collect()
    }

    /// Whether the server's start and stop are there.
    fn has_start_and_stop(&self) -> bool {
        let listening = self
            .lines
            .first()
            .is_some_and(|l| l.starts_with("- Clark listening on 127.0.0.1:"));
        listening && self.lines.last().is_some_and(|l| l == "- stopped")
    }
}

/// Starts a server whose log keeps `lines`; one client sends it a valid IAMAT, an invalid
/// line, and a WHATSAT about a client it has never heard of (invalid too), one at a time,
/// then leaves; returns the log once the server has stopped.
async fn one_client_at(lines: LogLines) -> Logged {
    let (mut config, dir) = one_node_config(NO_PLACES, PLACES_TIMEOUT, MAX_LINE_BYTES);
    config.log.lines = lines;
    let node = TestNode::start_config(config, dir, None).await;
    let mut client = node.connect().await;
    let at = client.ask(IAMAT).await;
    assert!(at.starts_with("AT Clark "), "{at:?}");
    assert_eq!(client.ask("bogus line").await, "? bogus line\n");
    let unknown = client.ask("WHATSAT nobody.example.org 10 5").await;
    assert_eq!(unknown, "? WHATSAT nobody.example.org 10 5\n");
    client.half_close().await;
    assert_eq!(client.read_to_end().await, "");
    let text = node.stop().await;
    let lines = text
        .lines()
        .map(|l| {
            l.split_once(' ')
                .expect("a stamp, then the line")
                .1
                .to_owned()
        })
        .collect();
    Logged { lines, text }
}

#[actix_rt::test]
async fn all_keeps_every_line_in_and_out_and_every_connection() {
    let log = one_client_at(LogLines::All).await;
    assert!(log.has_start_and_stop(), "{}", log.text);
    let client = log.client();
    assert!(
        client[0].starts_with("- opened from 127.0.0.1:"),
        "{}",
        log.text
    );
    assert_eq!(client[1], format!("< {IAMAT}"), "{}", log.text);
    assert!(
        client[2].starts_with("> AT Clark ") && client[2].ends_with(&IAMAT[6..]),
        "{}",
        log.text
    );
    assert_eq!(client[3..], INVALID_LINES_AND_CLOSE, "{}", log.text);
}

#[actix_rt::test]
async fn errors_keeps_invalid_lines_and_their_answers_and_connections_not_valid_traffic() {
    let log = one_client_at(LogLines::Errors).await;
    assert!(log.has_start_and_stop(), "{}", log.text);
    assert!(!log.text.contains("IAMAT"), "{}", log.text);
    assert!(!log.text.contains("AT Clark"), "{}", log.text);
    let client = log.client();
    assert!(
        client[0].starts_with("- opened from 127.0.0.1:"),
        "{}",
        log.text
    );
    assert_eq!(client[1..], INVALID_LINES_AND_CLOSE, "{}", log.text);
}

#[actix_rt::test]
async fn none_keeps_the_servers_start_and_stop_but_no_line_and_no_client() {
    let log = one_client_at(LogLines::None).await;
    assert!(log.has_start_and_stop(), "{}", log.text);
    assert!(
        !log.lines.iter().any(|l| l.starts_with("conn ")),
        "{}",
        log.text
    );
    for left_out in ["IAMAT", "bogus", "WHATSAT", "opened from", "closed"] {
        assert!(!log.text.contains(left_out), "{left_out}: {}", log.text);
    }
}
