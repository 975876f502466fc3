//! A client connection to a line server: requests written in batches, answers read as lines
//! from one reusable buffer (no allocation per line), both at once so that a large batch
//! cannot deadlock against a server that stops reading while its answers are not read.

use std::io::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memchr::{memchr, memmem};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Stamp;
use super::stats::Recorder;

/// The position every benchmark IAMAT reports, unless it needs distinct ones.
pub const POSITION: &str = "+34.068930-118.445127";

/// The answer buffer's first size, allocated on the first read (an idle connection has
/// none: `bench idle` holds thousands).
const INITIAL_BUFFER: usize = 64 * 1024;

/// The longest one exchange (a batch written, its answers read) may take: past it the server
/// is taken for silent (or not speaking this protocol) and the connection for failed.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest answer line accepted.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// What an answer was, by its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An `AT ` line (with, for WHATSAT, its JSON and the empty line).
    At,
    /// A `? ` line: an invalid command, or a WHATSAT of a client the server does not know.
    Unknown,
    /// Anything else.
    Other,
}

/// One answer, as far as a benchmark cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// What it was.
    pub kind: Kind,
    /// For a WHATSAT: its JSON is a places error object (it has an `error_message`).
    pub places_error: bool,
}

/// How answers are cut out of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One line per answer (IAMAT, the echo server).
    Line,
    /// WHATSAT: an `AT ` line, the JSON and an empty line; or one `? ` line.
    Whatsat,
}

/// Lines read from a stream into one growing buffer.
#[derive(Debug, Default)]
pub struct LineBuf {
    buf: Vec<u8>,
    head: usize,
    tail: usize,
    /// The first answer line that was not `AT `, for error reports.
    first_odd: Option<String>,
}

impl LineBuf {
    /// The next line, without its `\n` (or `\r\n`).
    pub async fn line<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> io::Result<&[u8]> {
        let range = self.next_line(reader).await?;
        Ok(&self.buf[range])
    }

    /// Where the next line is in the buffer (valid until the next read).
    async fn next_line<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> io::Result<std::ops::Range<usize>> {
        loop {
            if let Some(i) = memchr(b'\n', &self.buf[self.head..self.tail]) {
                let start = self.head;
                self.head += i + 1;
                let mut end = start + i;
                if end > start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                return Ok(start..end);
            }
            self.fill(reader).await?;
        }
    }

    /// Reads one answer framed as `framing`.
    pub async fn answer<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        framing: Framing,
    ) -> io::Result<Answer> {
        let first = self.next_line(reader).await?;
        let first = &self.buf[first];
        let kind = if first.starts_with(b"AT ") {
            Kind::At
        } else if first.starts_with(b"? ") {
            Kind::Unknown
        } else {
            Kind::Other
        };
        if kind != Kind::At && self.first_odd.is_none() {
            self.first_odd = Some(String::from_utf8_lossy(first).into_owned());
        }
        let mut places_error = false;
        if framing == Framing::Whatsat && kind == Kind::At {
            loop {
                let line = self.line(reader).await?;
                if line.is_empty() {
                    break;
                }
                if memmem::find(line, b"\"error_message\"").is_some() {
                    places_error = true;
                }
            }
        }
        Ok(Answer { kind, places_error })
    }

    /// The first answer line seen that was not an `AT ` line.
    pub fn first_odd(&self) -> Option<&str> {
        self.first_odd.as_deref()
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> io::Result<()> {
        if self.head > 0 {
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        if self.tail == self.buf.len() {
            if self.buf.len() >= MAX_LINE {
                return Err(io::Error::other("an answer line is longer than 16 MiB"));
            }
            self.buf.resize((self.buf.len() * 2).max(INITIAL_BUFFER), 0);
        }
        let n = reader.read(&mut self.buf[self.tail..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.tail += n;
        Ok(())
    }
}

/// A connection to a line server.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    lines: LineBuf,
    /// The requests to send with the next [`Conn::exchange`].
    pub out: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (`HOST:PORT`), with Nagle's algorithm off.
    pub async fn connect(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            lines: LineBuf::default(),
            out: Vec::new(),
        })
    }

    /// Sends [`Conn::out`] in one write and reads `n` answers while it goes, calling `each`
    /// for every answer as it arrives; fails if it all takes longer than
    /// [`EXCHANGE_TIMEOUT`]. `out` is empty afterwards.
    pub async fn exchange(
        &mut self,
        n: usize,
        framing: Framing,
        mut each: impl FnMut(Answer),
    ) -> io::Result<()> {
        let (mut reader, mut writer) = self.stream.split();
        let (out, lines) = (&self.out, &mut self.lines);
        let write = writer.write_all(out);
        let read = async {
            for _ in 0..n {
                each(lines.answer(&mut reader, framing).await?);
            }
            Ok(())
        };
        let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            tokio::try_join!(write, read).map(|_| ())
        })
        .await;
        self.out.clear();
        result.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {EXCHANGE_TIMEOUT:?}"),
            ))
        })
    }

    /// The first answer line seen that was not an `AT ` line.
    pub fn first_odd(&self) -> Option<&str> {
        self.lines.first_odd()
    }

    /// Appends `IAMAT <client> <position> <stamp>` to the requests.
    pub fn push_iamat(&mut self, client: std::fmt::Arguments<'_>, position: &str, stamp: Stamp) {
        // Writing into a Vec cannot fail.
        let _ = writeln!(self.out, "IAMAT {client} {position} {stamp}");
    }

    /// Appends `WHATSAT <client> <radius> <bound>` to the requests.
    pub fn push_whatsat(&mut self, client: std::fmt::Arguments<'_>, radius: u32, bound: u32) {
        let _ = writeln!(self.out, "WHATSAT {client} {radius} {bound}");
    }
}

/// What one connection's [`closed_loop`] measured.
#[derive(Debug)]
pub struct LoopOutcome {
    /// The latency of each answer that counted, and the errors.
    pub recorder: Recorder,
    /// Why the connection failed, if it did (its loop ended there).
    pub failure: Option<String>,
    /// The first answer that was not an `AT ` line, if any.
    pub first_odd: Option<String>,
}

impl LoopOutcome {
    /// The first thing that went wrong on the connection: its failure, else an odd answer.
    pub fn first_error(&self) -> Option<String> {
        let odd = || self.first_odd.as_ref().map(|odd| format!("answer {odd:?}"));
        self.failure.clone().or_else(odd)
    }
}

/// Closed-loop load on one connection until `deadline`: `fill` queues a batch of `pipeline`
/// requests, which go out in one write; each answer is timed from that write, and counted
/// if `counts` says so, else as an error. `done` counts the answers (for a progress bar). A
/// failed connection ends its loop, the answers its batch still owed counted as errors.
pub async fn closed_loop(
    mut conn: Conn,
    pipeline: usize,
    framing: Framing,
    deadline: Instant,
    done: &AtomicU64,
    mut fill: impl FnMut(&mut Conn),
    mut counts: impl FnMut(Answer) -> bool,
) -> LoopOutcome {
    let mut recorder = Recorder::default();
    let mut failure = None;
    while Instant::now() < deadline {
        fill(&mut conn);
        let sent = Instant::now();
        let mut answered = 0;
        let result = conn
            .exchange(pipeline, framing, |answer| {
                answered += 1;
                if counts(answer) {
                    recorder.record(sent.elapsed());
                } else {
                    recorder.error();
                }
            })
            .await;
        done.fetch_add(answered as u64, Ordering::Relaxed);
        if let Err(e) = result {
            recorder.errors((pipeline - answered) as u64);
            failure = Some(e.to_string());
            break;
        }
    }
    LoopOutcome {
        recorder,
        failure,
        first_odd: conn.first_odd().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answers(input: &[u8], framing: Framing, n: usize) -> io::Result<Vec<Answer>> {
        let mut reader = input;
        let mut lines = LineBuf {
            buf: vec![0; 8],
            ..LineBuf::default()
        };
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(lines.answer(&mut reader, framing).await?);
        }
        Ok(got)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    }

    #[test]
    fn line_answers_are_told_apart_and_the_buffer_grows() {
        let input = b"AT Clark +0.000000001 a-long-client-name +1+1 1.5\r\n? hello\nIAMAT x\n";
        let got = runtime()
            .block_on(answers(input, Framing::Line, 3))
            .expect("three answers");
        let kinds: Vec<Kind> = got.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, [Kind::At, Kind::Unknown, Kind::Other]);
    }

    #[test]
    fn a_whatsat_answer_runs_to_the_empty_line() {
        let input =
            b"AT C +0.1 k +1+1 1\n{\n  \"results\": [],\n  \"error_message\": \"no\"\n}\n\n\
                      ? WHATSAT nobody 10 5\nAT C +0.1 k +1+1 1\n{\n}\n\n";
        let got = runtime()
            .block_on(answers(input, Framing::Whatsat, 3))
            .expect("three answers");
        assert_eq!(
            got,
            [
                Answer {
                    kind: Kind::At,
                    places_error: true
                },
                Answer {
                    kind: Kind::Unknown,
                    places_error: false
                },
                Answer {
                    kind: Kind::At,
                    places_error: false
                },
            ]
        );
    }

    #[test]
    fn an_early_end_is_an_error() {
        let result = runtime().block_on(answers(b"AT x\n", Framing::Line, 2));
        assert_eq!(
            result.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::UnexpectedEof)
        );
    }
}
