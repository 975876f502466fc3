//! Each server's log file (SPEC section 7): every line in and out, with a timestamp and the
//! connection it belongs to, and connections and links opened and closed.
//!
//! Logging sits on the per-line hot path, so the caller only timestamps the event and hands
//! it over (the line itself is a shared `Bytes`, not a copy); a thread of the log's own
//! formats and writes it through a buffer, every few milliseconds, flushing each time. The hand-over
//! queue is bounded: if the disk cannot keep up, events are counted and dropped rather than
//! held in memory, and the file says how many were lost.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::Bytes;

/// How many events may wait for the log thread before new ones are dropped.
const LOG_QUEUE_EVENTS: usize = 64 * 1024;

/// How long the log thread sleeps after writing out what was queued: the most a logged
/// line waits before it reaches the file.
const LOG_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// A handle to a server's log file; cheap to clone, one per actor that logs.
#[derive(Clone, Debug)]
pub struct ServerLog {
    /// Events for the log thread; `None` for a log that writes nowhere (unit tests).
    tx: Option<SyncSender<Event>>,
    /// Events dropped because the queue was full, reported by the log thread.
    dropped: Arc<AtomicU64>,
}

/// The log thread, to be closed (flushed and joined) when the server stops.
#[derive(Debug)]
pub struct LogWriter {
    tx: SyncSender<Event>,
    thread: JoinHandle<()>,
}

#[derive(Debug)]
enum Event {
    In(SystemTime, u64, Bytes),
    Out(SystemTime, u64, Bytes),
    Note(SystemTime, Option<u64>, String),
    Close,
}

impl ServerLog {
    /// Opens (appending) `<dir>/<name>.log` and starts its thread.
    pub fn open(dir: &Path, name: &str) -> io::Result<(ServerLog, LogWriter)> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let (tx, rx) = mpsc::sync_channel(LOG_QUEUE_EVENTS);
        let dropped = Arc::new(AtomicU64::new(0));
        let thread_dropped = Arc::clone(&dropped);
        let thread = std::thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || write_events(rx, BufWriter::new(file), &thread_dropped))?;
        let log = ServerLog {
            tx: Some(tx.clone()),
            dropped,
        };
        Ok((log, LogWriter { tx, thread }))
    }

    /// A log that writes nowhere, for tests of one actor.
    pub fn discard() -> ServerLog {
        ServerLog {
            tx: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A line received on connection `conn`, without its line ending.
    pub fn line_in(&self, conn: u64, line: &Bytes) {
        self.send(Event::In(SystemTime::now(), conn, line.clone()));
    }

    /// An answer written on connection `conn` (one or more lines, each ending in `\n`).
    pub fn answer_out(&self, conn: u64, answer: &Bytes) {
        self.send(Event::Out(SystemTime::now(), conn, answer.clone()));
    }

    /// Anything else worth a line: a connection or link opened or closed, a refusal.
    pub fn note(&self, conn: Option<u64>, text: impl Into<String>) {
        self.send(Event::Note(SystemTime::now(), conn, text.into()));
    }

    fn send(&self, event: Event) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(event)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LogWriter {
    /// Writes out everything logged so far and stops the thread.
    pub fn close(self) {
        // A full queue makes this wait for room: closing must not lose the tail of the log.
        let _ = self.tx.send(Event::Close);
        let _ = self.thread.join();
    }
}

fn write_events(rx: Receiver<Event>, mut out: BufWriter<File>, dropped: &AtomicU64) {
    let mut text = String::new();
    let mut reported_drops = 0;
    loop {
        // Drain what is queued, then sleep: a thread blocked in `recv` would be woken by
        // nearly every event, and those wake-ups cost the server more than the writing.
        loop {
            match rx.try_recv() {
                Ok(Event::Close) | Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
                Ok(event) => {
                    text.clear();
                    format_event(&event, &mut text);
                    let _ = out.write_all(text.as_bytes());
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let drops = dropped.load(Ordering::Relaxed);
        if drops != reported_drops {
            let stamp = humantime::format_rfc3339_micros(SystemTime::now());
            let _ = writeln!(
                out,
                "{stamp} log queue full: {} events not logged",
                drops - reported_drops
            );
            reported_drops = drops;
        }
        let _ = out.flush();
        std::thread::sleep(LOG_POLL_INTERVAL);
    }
}

fn format_event(event: &Event, text: &mut String) {
    let (at, conn, mark, body): (_, _, _, &[u8]) = match event {
        Event::In(at, conn, line) => (at, Some(*conn), "<", line),
        Event::Out(at, conn, answer) => (at, Some(*conn), ">", answer),
        Event::Note(at, conn, note) => (at, *conn, "-", note.as_bytes()),
        Event::Close => return,
    };
    let stamp = humantime::format_rfc3339_micros(*at);
    let body = String::from_utf8_lossy(body);
    let body = body.strip_suffix('\n').unwrap_or(&body);
    for line in body.split('\n') {
        let _ = match conn {
            Some(conn) => writeln!(text, "{stamp} conn {conn} {mark} {line}"),
            None => writeln!(text, "{stamp} {mark} {line}"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_in_and_out_is_written_with_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = ServerLog::open(dir.path(), "Clark").unwrap();
        log.note(Some(3), "opened from 127.0.0.1:5000");
        log.line_in(3, &Bytes::from_static(b"WHATSAT a 1 1"));
        log.answer_out(3, &Bytes::from_static(b"AT x\n{\n}\n\n"));
        log.line_in(3, &Bytes::from_static(b"bad \xff"));
        writer.close();
        let text = fs::read_to_string(dir.path().join("Clark.log")).unwrap();
        let lines: Vec<_> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        assert_eq!(
            lines,
            [
                "conn 3 - opened from 127.0.0.1:5000",
                "conn 3 < WHATSAT a 1 1",
                "conn 3 > AT x",
                "conn 3 > {",
                "conn 3 > }",
                "conn 3 > ",
                "conn 3 < bad \u{fffd}",
            ]
        );
        let stamp = text.split(' ').next().unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
    }
}
