//! A black-box fuzz test of a three-server chain A-B-C: random and mutated lines over
//! several client connections at once (valid commands, numbers huge and odd, digits from
//! other scripts, NUL, a CR alone, lines at and over the limit, bytes that are not UTF-8,
//! hellos and records where a client's lines go). Every line must get exactly one answer,
//! in order, of the form its line calls for; no link may drop; and afterwards every server
//! must hold the same records.
//!
//! The seed is printed (replay with `HERD_TEST_SEED`); `HERD_FUZZ_LINES` sets the lines per
//! connection (the default keeps the test to a few seconds).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::herds::{EVENTUALLY, HerdBuilder, seed};
use common::{MAX_LINE_BYTES, eventually, within};
use herd::protocol::Command;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// Client connections per server.
const CONNECTIONS_PER_SERVER: usize = 2;

/// Lines per connection, unless `HERD_FUZZ_LINES` says otherwise.
const DEFAULT_LINES: usize = 8000;

/// Client ids drawn from: few, so that records for one client race across the herd.
const CLIENTS: usize = 40;

/// How far ahead of the server's clock a client's time may be (the default bound).
const MAX_SKEW_S: u64 = 300;

/// What the answer to one line must be.
#[derive(Debug)]
enum Expect {
    /// `? ` and this text.
    Invalid(String),
    /// The AT line of this IAMAT: `AT <server> <diff> ` then these three fields.
    At { server: String, tail: String },
    /// Either `? ` and the line, or an AT line for this client followed by JSON and an
    /// empty line.
    Whatsat { line: String, client: String },
}

/// Makes random lines, shaped to get deep into the parser.
struct Lines {
    rng: fastrand::Rng,
    now: u64,
}

impl Lines {
    fn client(&mut self) -> String {
        format!("fz{}", self.rng.usize(..CLIENTS))
    }

    fn coordinate(&mut self, limit: u32) -> String {
        let sign = if self.rng.bool() { '+' } else { '-' };
        let int = self.rng.u32(..=limit);
        match self.rng.u8(..3) {
            0 if int < limit => format!("{sign}{int}.{}", self.rng.u32(..1_000_000)),
            _ => format!("{sign}{int}"),
        }
    }

    fn position(&mut self) -> String {
        let lat = self.coordinate(90);
        let lng = self.coordinate(180);
        format!("{lat}{lng}")
    }

    /// A client time in the past few days, with a fraction of any length up to 12 digits.
    fn time(&mut self) -> String {
        let secs = self.now - self.rng.u64(..300_000);
        match self.rng.u8(..3) {
            0 => secs.to_string(),
            _ => {
                let digits = self.rng.usize(1..=12);
                let fraction: String = (0..digits)
                    .map(|_| char::from(b'0' + self.rng.u8(..10)))
                    .collect();
                format!("{secs}.{fraction}")
            }
        }
    }

    /// An odd value for a numeric field.
    fn odd_number(&mut self) -> String {
        let odd = [
            "99999999999999999999999",
            "18446744073709551615.999999999",
            "99999999999.999999999",
            "1e9",
            "-5",
            "+5",
            "0x10",
            "1..2",
            ".5",
            "5.",
            "٣٤",
            "３４",
            "1\u{0}2",
            "NaN",
            "inf",
            "+90.0000000001-180",
            "+34.5-118.2+1",
            "+-1+1",
        ];
        odd[self.rng.usize(..odd.len())].to_owned()
    }

    /// A field separator: mostly a space, sometimes another white space or a run.
    fn separator(&mut self) -> &'static str {
        const SEPARATORS: [&str; 7] = [" ", " ", " ", "\t", "  ", "\x0b", "\x0c"];
        SEPARATORS[self.rng.usize(..SEPARATORS.len())]
    }

    fn join(&mut self, fields: &[String]) -> Vec<u8> {
        let mut line = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                line.extend_from_slice(self.separator().as_bytes());
            }
            line.extend_from_slice(field.as_bytes());
        }
        line
    }

    /// One line, without its ending. `first` lines of a connection are never hellos.
    fn next(&mut self, first: bool) -> Vec<u8> {
        let mut line = match self.rng.u8(..100) {
            0..=34 => {
                let fields = [
                    "IAMAT".to_owned(),
                    self.client(),
                    self.position(),
                    self.time(),
                ];
                self.join(&fields)
            }
            35..=49 => {
                let radius = format!("{}", self.rng.u32(1..=50));
                let bound = format!("{}", self.rng.u32(1..=20));
                let fields = ["WHATSAT".to_owned(), self.client(), radius, bound];
                self.join(&fields)
            }
            50..=64 => {
                // A command with one field made odd.
                let mut fields = vec![
                    "IAMAT".to_owned(),
                    self.client(),
                    self.position(),
                    self.time(),
                ];
                if self.rng.bool() {
                    fields = vec!["WHATSAT".to_owned(), self.client(), "10".into(), "5".into()];
                }
                let at = self.rng.usize(1..fields.len());
                fields[at] = self.odd_number();
                self.join(&fields)
            }
            65..=69 if !first => {
                format!("PEER {}", ["A", "B", "C", "Z"][self.rng.usize(..4)]).into_bytes()
            }
            65..=74 => {
                let fields = [
                    "AT".to_owned(),
                    ["A", "B", "C", "Nobody"][self.rng.usize(..4)].to_owned(),
                    "+0.000000000".to_owned(),
                    self.client(),
                    self.position(),
                    self.time(),
                ];
                self.join(&fields)
            }
            75..=79 => {
                // An IAMAT exactly as long as a line may be: its record would not fit.
                let head = format!("IAMAT {} +1+1 {}.", self.client(), self.now - 10);
                let mut line = head.into_bytes();
                line.resize(MAX_LINE_BYTES, b'7');
                line
            }
            80..=82 => {
                // Over the limit, by a little or a lot.
                let over = MAX_LINE_BYTES + 1 + self.rng.usize(..3 * MAX_LINE_BYTES);
                (0..over).map(|_| self.rng.u8(b' '..=b'~')).collect()
            }
            83..=87 => {
                let mut bytes: Vec<u8> =
                    (0..self.rng.usize(..40)).map(|_| self.rng.u8(..)).collect();
                if first && bytes.starts_with(b"PEER") {
                    bytes.insert(0, b'x');
                }
                bytes
            }
            88..=91 => Vec::new(),
            92..=95 => b" \t ".to_vec(),
            _ => {
                // A valid IAMAT with one byte replaced by NUL, a CR alone, or a byte that is
                // not UTF-8.
                let fields = [
                    "IAMAT".to_owned(),
                    self.client(),
                    self.position(),
                    self.time(),
                ];
                let mut line = self.join(&fields);
                let at = self.rng.usize(..line.len());
                line[at] = [0u8, b'\r', 0xff, 0xc3][self.rng.usize(..4)];
                line
            }
        };
        // The line must not end the way a line ending does, nor hold one.
        line.retain(|&b| b != b'\n');
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        line
    }
}

/// The answer `line`, received by `server` at about `now`, must get.
fn expect(server: &str, line: &[u8], now: u64) -> Expect {
    if line.len() > MAX_LINE_BYTES {
        return Expect::Invalid(String::from_utf8_lossy(&line[..MAX_LINE_BYTES]).into_owned());
    }
    let invalid = || Expect::Invalid(String::from_utf8_lossy(line).into_owned());
    match Command::parse(line) {
        Command::Iamat(iamat) => {
            // The lines made to fill the limit are the only ones near it.
            let too_long = line.len() + 30 > MAX_LINE_BYTES;
            let ahead = iamat.time.nanos.0 > i128::from(now + MAX_SKEW_S) * 1_000_000_000;
            if too_long || ahead {
                return invalid();
            }
            let tail = format!(
                "{} {} {}",
                iamat.client, iamat.location.text, iamat.time.text
            );
            Expect::At {
                server: server.to_owned(),
                tail,
            }
        }
        Command::Whatsat(whatsat) => Expect::Whatsat {
            line: String::from_utf8_lossy(line).into_owned(),
            client: whatsat.client.to_owned(),
        },
        Command::Hello(_) | Command::At(_) | Command::Invalid => invalid(),
    }
}

/// At most the first 120 characters of `text`, for failure messages about 8 KiB lines.
fn short(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// Reads one answer line, without its `\n`.
async fn read_line(reader: &mut BufReader<OwnedReadHalf>, n: usize) -> String {
    let mut line = String::new();
    let read = within(reader.read_line(&mut line), "read an answer").await;
    match read {
        Ok(_) if line.ends_with('\n') => {
            line.pop();
            line
        }
        other => panic!("line {n}: no whole answer ({other:?}, {:?})", short(&line)),
    }
}

/// Reads the answer to line `n` and checks it against `expected`.
async fn check_answer(reader: &mut BufReader<OwnedReadHalf>, expected: &Expect, n: usize) {
    let answer = read_line(reader, n).await;
    match expected {
        Expect::Invalid(text) => {
            let ok = answer == format!("? {text}");
            assert!(
                ok,
                "line {n}: {:?} answers {:?}",
                short(&answer),
                short(text)
            );
        }
        Expect::At { server, tail } => {
            let head = format!("AT {server} ");
            let ok = answer.starts_with(&head) && answer.ends_with(&format!(" {tail}"));
            let (answer, tail) = (short(&answer), short(tail));
            assert!(
                ok,
                "line {n}: {answer:?} is not the AT line of ... {tail:?}"
            );
        }
        Expect::Whatsat { line, client: who } => {
            if answer == format!("? {line}") {
                return;
            }
            let fields: Vec<&str> = answer.split(' ').collect();
            assert!(
                fields.len() == 6 && fields[0] == "AT" && fields[3] == who,
                "line {n}: {:?} answers {:?}",
                short(&answer),
                short(line)
            );
            while !read_line(reader, n).await.is_empty() {}
        }
    }
}

#[actix_rt::test]
async fn random_and_mutated_lines_each_get_one_answer_in_order_and_the_herd_agrees() {
    let seed = seed();
    println!("seed {seed} (replay with HERD_TEST_SEED={seed})");
    let lines_per_connection = std::env::var("HERD_FUZZ_LINES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_LINES);
    let servers = ["A", "B", "C"];
    let mut herd = HerdBuilder::new(&servers, &[("A", "B"), ("B", "C")])
        .start()
        .await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // The links are up before the first line.
    let warm = herd.iamat("A", "warm", "+1+1", &now.to_string()).await;
    herd.eventually_know(&["C"], "warm", &warm).await;

    let mut connections = Vec::new();
    for (k, server) in servers
        .iter()
        .cycle()
        .take(3 * CONNECTIONS_PER_SERVER)
        .enumerate()
    {
        let stream = within(TcpStream::connect(herd.addr(server)), "connect")
            .await
            .unwrap();
        let mut lines = Lines {
            rng: fastrand::Rng::with_seed(seed.wrapping_add(k as u64)),
            now,
        };
        let server = server.to_string();
        connections.push(actix_rt::spawn(async move {
            let (reader, mut writer) = stream.into_split();
            let mut reader = BufReader::new(reader);
            let mut expected = Vec::with_capacity(lines_per_connection);
            let mut text = Vec::new();
            for n in 0..lines_per_connection {
                let line = lines.next(n == 0);
                expected.push(expect(&server, &line, now));
                text.extend_from_slice(&line);
                text.extend_from_slice(if lines.rng.bool() { b"\n" } else { b"\r\n" });
            }
            // Written in pieces of random sizes while the answers are read.
            let write = async move {
                let mut rest = &text[..];
                while !rest.is_empty() {
                    let piece = lines.rng.usize(1..=rest.len().min(20_000));
                    within(writer.write_all(&rest[..piece]), "send")
                        .await
                        .unwrap();
                    rest = &rest[piece..];
                }
                writer
            };
            let read = async {
                for (n, expected) in expected.iter().enumerate() {
                    check_answer(&mut reader, expected, n).await;
                }
            };
            let (mut writer, ()) = tokio::join!(write, read);
            within(writer.shutdown(), "half-close").await.unwrap();
            let mut rest = Vec::new();
            within(reader.read_to_end(&mut rest), "read to the end")
                .await
                .unwrap();
            assert_eq!(rest, b"", "answers past the last line");
        }));
    }
    for connection in connections {
        connection.await.unwrap();
    }

    // Every server converges on the same record for every client: a third of the lines are
    // valid IAMATs, so each client has one many times over.
    for i in 0..CLIENTS {
        let client = format!("fz{i}");
        eventually(
            EVENTUALLY,
            &format!("the herd agrees on {client}"),
            async || {
                let mut known = Vec::new();
                for server in servers {
                    known.push(
                        herd.whatsat(server, &client)
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                if known[0].is_some() && known.iter().all(|k| *k == known[0]) {
                    Ok(())
                } else {
                    Err(format!("{known:?}"))
                }
            },
        )
        .await;
    }
    // No link dropped (read once the herd agrees, long after the last line was logged, and
    // before stopping drops the links).
    for server in servers {
        let log = herd.log(server);
        assert!(
            !log.contains(" dropped"),
            "a link of {server} dropped:\n{log}"
        );
    }
    herd.stop_all().await;
}
