//! Each server's log file: every line in and out, with a timestamp and the
//! connection it belongs to, and connections and links opened and closed.
//!
//! How much of that is written is the server's [`LogLines`] (`[log] lines`): everything, only
//! what needs attention, or only the server's own events. Each note says what it is about
//! ([`NoteKind`]), and each level keeps the kinds it is for. A level that leaves something
//! out costs one comparison where it is logged: it is checked before anything is formatted.
//!
//! Logging sits on the per-line hot path, so it must cost the server little and never make
//! it wait. The caller formats the log line straight into a shared buffer (a few tens of
//! nanoseconds: the date part of the timestamp is formatted once a second), and a thread of
//! the log's own swaps the buffer out every few milliseconds (sooner when a burst fills it)
//! and writes it to the file; when a turn finds nothing, it sleeps until the next line
//! comes, so an idle server's log never wakes. That thread only makes one `write` per turn,
//! so it never holds the server's core for long (formatting there made it run for hundreds
//! of microseconds at a time, which showed as a doubled p99 latency under load). It keeps
//! the normal priority: at a lower one it fell behind under heavy load and dropped events.
//! The buffer is bounded: if the disk cannot keep up, events are counted and dropped rather
//! than held in memory, and the file says how many were lost.
//!
//! A busy server writes tens of megabytes of log a second, which nobody reads back soon:
//! only its last 32 MiB stay in the page cache, the older pages being handed back to the
//! kernel as it goes (by a helper thread, so that the log thread never waits for the disk's
//! writeback).
//!
//! The file is reopened at its path on request ([`LogWriter::reopen`], on SIGUSR1), so that
//! a rotation (logrotate moving the file away) needs no restart. A write that fails (a full
//! disk) loses that text, never the server: standard error says so once, and the file,
//! once written again, says how much is missing.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{info, warn};
use rustix::fs::Advice;

use crate::config::{ConfigWord, LogConfig};

/// The log target of what happens to the log file itself (a failed write, a reopen).
pub const LOG_TARGET: &str = "herd::server_log";

/// How many bytes of log may wait for the log thread before new events are dropped.
const LOG_BUFFER_BYTES: usize = 8 << 20;

/// How long the log thread sleeps after writing out what was buffered: the most a logged
/// line waits before it reaches the file. Each write holds the server's core (when they
/// share one) for as long as it takes the kernel to copy it: every 2 ms rather than 5, the
/// writes are shorter and one server's p99 latency was ~10% lower
/// (`bench/side_by_side.sh`). Longer turns are not cheaper: run alone
/// (`bench/alternate.sh`), 4 ms gave 0.991 of the throughput at one server and 0.980 in a
/// chain, and 1 ms the same as 2 in a chain (0.997).
const LOG_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// Past this many bytes waiting, the log thread is woken before its interval is over, so
/// that a burst of lines does not grow the buffer (and the server's memory) for long.
const WAKE_AT_BYTES: usize = 256 << 10;

/// A buffer larger than this is not kept for reuse once written (a burst is over).
const KEPT_BUFFER_BYTES: usize = 1 << 20;

/// How much a server's log keeps (`[log] lines`). Each level keeps what the one after it
/// keeps, and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLines {
    /// Every line in and out, client connections opened and closed, and every note.
    #[default]
    All,
    /// What needs attention: invalid lines (the line in, when it is found invalid, and
    /// its `? ...` answer out), lines a neighbor sends back on a link (refusals), client
    /// connections opened and closed, the server's own events and failures. No valid
    /// traffic: no IAMAT or WHATSAT and their answers, no records sent on links.
    Errors,
    /// No lines and no client connections: only the server's own events (start, stop,
    /// links) and failures.
    None,
}

impl LogLines {
    /// Whether a note of `kind` is written at this level.
    fn keeps(self, kind: NoteKind) -> bool {
        match kind {
            NoteKind::Connection => self != LogLines::None,
            NoteKind::Server | NoteKind::Failure => true,
        }
    }
}

impl ConfigWord for LogLines {
    const WORDS: &'static [(Self, &'static str)] = &[
        (LogLines::All, "all"),
        (LogLines::Errors, "errors"),
        (LogLines::None, "none"),
    ];
}

impl fmt::Display for LogLines {
    /// As the config spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What a note is about, which decides at which [`LogLines`] it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    /// A connection accepted or closed: a client's, or a neighbor's link on the side that
    /// accepts it (its hello, once accepted, is a [`NoteKind::Server`] note): at `all` and
    /// `errors`.
    Connection,
    /// The server's own events: its start and stop, links opened, re-established,
    /// accepted, replaced and closed, its store file read or rewritten: at every level.
    Server,
    /// Something failed or was refused (a link dropped, a write that failed, trouble with
    /// the store file, a handshake or a hello refused): at every level.
    Failure,
}

/// A handle to a server's log file; cheap to clone, one per actor that logs.
#[derive(Clone, Debug)]
pub struct ServerLog {
    /// The buffer the log thread writes out; `None` for a log that writes nowhere (unit
    /// tests).
    shared: Option<Arc<Shared>>,
    /// The last connection number given out (see [`ServerLog::next_conn`]).
    conns: Arc<AtomicU64>,
    /// What is written.
    lines: LogLines,
}

/// What a body to log holds: one line (no line ending inside: the caller cut it so), or
/// any number of them.
#[derive(Clone, Copy)]
enum Lines {
    One,
    Many,
}

/// The log thread, to be closed (flushed and joined) when the server stops: by
/// [`LogWriter::close`], or when it is dropped (a server dropped without being stopped, say
/// one whose start failed part-way, still writes out what it logged).
#[derive(Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
    /// Taken when the thread is joined.
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Set by [`LogWriter::close`]: write what is left and end.
    closed: AtomicBool,
    /// Set by [`LogWriter::reopen`]: open the file at its path again before the next write.
    reopen: AtomicBool,
    /// The log thread, to wake early.
    thread: OnceLock<Thread>,
    /// Bytes handed to the file, for the server's metrics.
    bytes_written: AtomicU64,
    /// Events dropped because the buffer was full, for the server's metrics.
    events_dropped: AtomicU64,
    /// The log thread's turns, for a test that it sleeps while idle.
    #[cfg(test)]
    turns: std::sync::atomic::AtomicU64,
}

/// Formatted log text waiting for the log thread.
#[derive(Debug, Default)]
struct Pending {
    text: Vec<u8>,
    /// Events dropped since the thread last took the text.
    dropped: u64,
    /// Whether the thread was woken since it last took the text.
    woken: bool,
    /// Whether the thread found nothing on its last turn and sleeps until a line wakes it.
    idle: bool,
    /// The start of the last log line written (stamp, connection, mark), and what it was
    /// made from: the lines of one read, or the answers sent together, share it.
    prefix: Vec<u8>,
    prefix_of: Option<(SystemTime, Option<u64>, u8)>,
    stamp: StampCache,
}

/// The date and time to the second, `YYYY-MM-DDTHH:MM:SS`, of the last event logged:
/// formatting it is the dear part of a timestamp, and it changes once a second.
#[derive(Debug, Default)]
struct StampCache {
    second: Option<u64>,
    text: String,
}

impl ServerLog {
    /// Opens (appending) `<dir>/<name>.log` of `config`, to write what its `lines` keeps,
    /// and starts its thread.
    pub fn open(config: &LogConfig, name: &str) -> io::Result<(ServerLog, LogWriter)> {
        let LogConfig { dir, lines } = config;
        fs::create_dir_all(dir)?;
        let file = LogFile::open(dir.join(format!("{name}.log")))?;
        let shared = Arc::new(Shared::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("log-{name}"))
            .spawn(move || write_out(&thread_shared, file))?;
        let _ = shared.thread.set(thread.thread().clone());
        let log = ServerLog::with(Some(Arc::clone(&shared)), *lines);
        Ok((
            log,
            LogWriter {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn with(shared: Option<Arc<Shared>>, lines: LogLines) -> ServerLog {
        ServerLog {
            shared,
            conns: Arc::default(),
            lines,
        }
    }

    /// A log that writes nowhere, for tests of one actor.
    pub fn discard() -> ServerLog {
        ServerLog::with(None, LogLines::All)
    }

    /// A log whose text stays in memory until the test takes it (no thread writes it out),
    /// for tests of one actor that look at what it logged or at a log that falls behind.
    #[cfg(test)]
    pub(crate) fn held() -> (ServerLog, HeldLog) {
        ServerLog::held_at(LogLines::All)
    }

    /// As [`ServerLog::held`], keeping what `lines` keeps.
    #[cfg(test)]
    pub(crate) fn held_at(lines: LogLines) -> (ServerLog, HeldLog) {
        let shared = Arc::new(Shared::default());
        (
            ServerLog::with(Some(Arc::clone(&shared)), lines),
            HeldLog(shared),
        )
    }

    /// The number of a connection just opened, client's or link's: the log labels each
    /// line with it (`conn 7`), so one connection's traffic can be followed. Numbers start
    /// at 1 and are never reused while the server runs.
    pub fn next_conn(&self) -> u64 {
        self.conns.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Bytes written to the file so far, and events dropped because the disk could not keep
    /// up: what the server's metrics say about its log.
    pub fn written_and_dropped(&self) -> (u64, u64) {
        self.shared.as_ref().map_or((0, 0), |shared| {
            (
                shared.bytes_written.load(Ordering::Relaxed),
                shared.events_dropped.load(Ordering::Relaxed),
            )
        })
    }

    /// Whether more log text waits than the thread takes in one turn: a sender that can
    /// wait (a link streaming its snapshot) holds back until it is written, rather than
    /// make the log drop lines.
    pub fn is_behind(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.lock().text.len() >= WAKE_AT_BYTES)
    }

    /// A line received on connection `conn` at `at` (the caller read the clock once for
    /// all the lines of a read), without its line ending; written at [`LogLines::All`].
    /// A line found invalid once parsed is handed to [`ServerLog::invalid_in`] too.
    pub fn line_in(&self, conn: u64, at: SystemTime, line: &[u8]) {
        if self.lines == LogLines::All {
            self.log(at, Some(conn), b'<', line, Lines::One);
        }
    }

    /// A line received on connection `conn` at `at`, found invalid (or otherwise not
    /// taken) once parsed: written at [`LogLines::Errors`], where [`ServerLog::line_in`]
    /// wrote nothing. At [`LogLines::All`], `line_in` wrote it when it came, so that the
    /// log keeps the order lines came in.
    pub fn invalid_in(&self, conn: u64, at: SystemTime, line: &[u8]) {
        if self.lines == LogLines::Errors {
            self.log(at, Some(conn), b'<', line, Lines::One);
        }
    }

    /// One line written on connection `conn` at `at` (an IAMAT's answer), without its line
    /// ending; written at [`LogLines::All`].
    pub fn line_out(&self, conn: u64, at: SystemTime, line: &str) {
        if self.lines == LogLines::All {
            self.log(at, Some(conn), b'>', line.as_bytes(), Lines::One);
        }
    }

    /// Lines written on connection `conn` at `at` (an answer, or records sent to a
    /// neighbor; the last line ending may be left out); written at [`LogLines::All`].
    pub fn lines_out(&self, conn: u64, at: SystemTime, lines: &[u8]) {
        if self.lines == LogLines::All {
            self.log(at, Some(conn), b'>', lines, Lines::Many);
        }
    }

    /// The answer to an invalid line (`? ...`), written on connection `conn` at `at`:
    /// written at [`LogLines::All`] and [`LogLines::Errors`].
    pub fn invalid_out(&self, conn: u64, at: SystemTime, answer: &[u8]) {
        if self.lines != LogLines::None {
            self.log(at, Some(conn), b'>', answer, Lines::Many);
        }
    }

    /// Lines written on connection `conn` at `at`, one log line each (records sent on a
    /// link: one log call, one prefix, for all the records of a write); written at
    /// [`LogLines::All`].
    pub fn each_line_out<'a>(
        &self,
        conn: u64,
        at: SystemTime,
        lines: impl IntoIterator<Item = &'a str>,
    ) {
        if self.lines == LogLines::All {
            self.append(at, Some(conn), b'>', |out| {
                lines.into_iter().for_each(|line| out.line(line.as_bytes()));
            });
        }
    }

    /// One of the server's own events ([`NoteKind::Server`]), written at every level: as
    /// [`ServerLog::note_as`] with that kind.
    pub fn note(&self, conn: Option<u64>, text: impl fmt::Display) {
        self.note_as(NoteKind::Server, conn, text);
    }

    /// Anything else worth a line, of kind `kind`: a connection or link opened or closed,
    /// a failure, a refusal. Written at the levels that keep `kind`; formatted only then
    /// (`format_args!` costs nothing at a level that leaves it out).
    pub fn note_as(&self, kind: NoteKind, conn: Option<u64>, text: impl fmt::Display) {
        if self.lines.keeps(kind) {
            let text = text.to_string();
            self.log(SystemTime::now(), conn, b'-', text.as_bytes(), Lines::Many);
        }
    }

    /// Appends one log line per line of `body`: `<stamp> [conn <n> ]<mark> <line>`.
    fn log(&self, now: SystemTime, conn: Option<u64>, mark: u8, body: &[u8], lines: Lines) {
        // Nearly every line is ASCII, which `is_ascii` sees faster than any UTF-8 check;
        // the rest is copied only if it is not UTF-8, to make it so.
        let lossy;
        let body = if body.is_ascii() {
            body
        } else {
            lossy = String::from_utf8_lossy(body);
            lossy.as_bytes()
        };
        let body = body.strip_suffix(b"\n").unwrap_or(body);
        self.append(now, conn, mark, |out| match lines {
            // Known to be one line: no search for more.
            Lines::One => out.line(body),
            Lines::Many => {
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', body) {
                    out.line(&body[start..end]);
                    start = end + 1;
                }
                out.line(&body[start..]);
            }
        });
    }

    /// Lets `write` append lines that share one prefix (stamp, connection, mark) to the
    /// pending text, unless the buffer is full (then the event is counted as dropped).
    fn append(
        &self,
        now: SystemTime,
        conn: Option<u64>,
        mark: u8,
        write: impl FnOnce(&mut LineWriter<'_>),
    ) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut pending = shared.lock();
        if pending.text.len() >= LOG_BUFFER_BYTES {
            pending.dropped += 1;
            return;
        }
        let Pending {
            text,
            stamp,
            prefix,
            prefix_of,
            ..
        } = &mut *pending;
        if *prefix_of != Some((now, conn, mark)) {
            prefix.clear();
            stamp.write(now, prefix);
            if let Some(conn) = conn {
                prefix.extend_from_slice(b" conn ");
                prefix.extend_from_slice(itoa::Buffer::new().format(conn).as_bytes());
            }
            prefix.extend_from_slice(&[b' ', mark, b' ']);
            *prefix_of = Some((now, conn, mark));
        }
        write(&mut LineWriter { text, prefix });
        let burst = text.len() >= WAKE_AT_BYTES && !pending.woken;
        if burst || pending.idle {
            pending.woken = true;
            pending.idle = false;
            drop(pending);
            if let Some(thread) = shared.thread.get() {
                thread.unpark();
            }
        }
    }
}

/// Appends log lines, each after the same prefix.
struct LineWriter<'a> {
    text: &'a mut Vec<u8>,
    prefix: &'a [u8],
}

impl LineWriter<'_> {
    /// One log line: the prefix, `line` (which holds no line ending) and a line ending.
    fn line(&mut self, line: &[u8]) {
        self.text.reserve(self.prefix.len() + line.len() + 1);
        self.text.extend_from_slice(self.prefix);
        self.text.extend_from_slice(line);
        self.text.push(b'\n');
    }
}

impl Shared {
    /// The pending text; a thread that panicked while holding it cannot have left it
    /// inconsistent (it only appends), so a poisoned lock is taken as is.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a [`ServerLog::held`] log holds, for the test to take.
#[cfg(test)]
pub(crate) struct HeldLog(Arc<Shared>);

#[cfg(test)]
impl HeldLog {
    /// The text logged since the last take, as the log thread would have written it.
    pub(crate) fn take(&self) -> String {
        let text = std::mem::take(&mut self.0.lock().text);
        String::from_utf8(text).expect("the log is UTF-8")
    }
}

/// `00` to `99`, each number's two digits at twice its value.
const TWO_DIGITS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

impl StampCache {
    /// Appends `now` as RFC 3339 UTC with microseconds, `2026-11-25T10:00:00.123456Z`.
    fn write(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.second != Some(second) {
            let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + since);
            self.text = whole.to_string().trim_end_matches('Z').to_owned();
            self.second = Some(second);
        }
        out.extend_from_slice(self.text.as_bytes());
        // Always six digits, two at a time: written into a fixed-size tail, copied in one
        // piece.
        let micros = since.subsec_micros();
        let mut tail = *b".000000Z";
        for (pair, value) in
            tail[1..7]
                .chunks_exact_mut(2)
                .zip([micros / 10_000, micros / 100 % 100, micros % 100])
        {
            let at = 2 * value as usize;
            pair.copy_from_slice(&TWO_DIGITS[at..at + 2]);
        }
        out.extend_from_slice(&tail);
    }
}

impl LogWriter {
    /// Writes out everything logged so far and stops the thread.
    pub fn close(self) {
        drop(self);
    }

    /// Has the thread open the file at its path again (after a rotation moved it away):
    /// what it has not written yet goes to the new file.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        if let Some(thread) = self.thread.as_ref() {
            thread.thread().unpark();
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.closed.store(true, Ordering::Release);
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// How much of the end of the log stays in the page cache: older pages are handed back
/// to the kernel once on disk (see [`LogFile::uncache`]).
const CACHED_LOG_BYTES: u64 = 32 << 20;

/// How many bytes the log thread writes between two requests to hand pages back.
const UNCACHE_STEP_BYTES: u64 = 8 << 20;

/// The log file as the log thread holds it.
struct LogFile {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes that failed to be written since the last write that succeeded (some of a
    /// failed write may have reached the file), and the first error.
    lost: Option<(usize, io::Error)>,
    /// About where the file ends: its length when opened and the text written since (not
    /// counting notes of lost text).
    end: u64,
    /// The range of the file whose pages were last asked for: those between its start
    /// and `uncached.1` are asked for once more with the next range.
    uncached: (u64, u64),
    /// The thread that hands pages back: `None` until first needed, `Some(None)` if it
    /// could not be started.
    uncacher: Option<Option<SyncSender<Uncache>>>,
}

/// A range of the log file whose pages the kernel may drop.
struct Uncache {
    file: Arc<File>,
    from: u64,
    len: NonZeroU64,
}

impl LogFile {
    /// Opens `path` to append to it, creating it if need be.
    fn open(path: PathBuf) -> io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let end = file.metadata().map_or(0, |m| m.len());
        Ok(LogFile {
            path,
            file: Arc::new(file),
            lost: None,
            end,
            uncached: (end, end),
            uncacher: None,
        })
    }

    /// Every [`UNCACHE_STEP_BYTES`], has the log's pages older than the last
    /// [`CACHED_LOG_BYTES`] handed back to the kernel (`posix_fadvise(DONTNEED)`), which
    /// starts writing back those still dirty and drops the clean ones; the next request
    /// covers them again, to drop those written back since. A log is written once and
    /// seldom read, and a busy server writes tens of megabytes of it a second: kept in the
    /// page cache, it takes a fresh page of memory for every 4 KiB and crowds out the page
    /// cache of everything else on the machine. On a VM that hands freed memory back to its
    /// host, writing into fresh pages costs twice as much as writing into reused ones and
    /// writing them back together. Dropped, the log's
    /// pages are reused while still warm.
    ///
    /// The advice is given by a thread of its own, because starting writeback waits when
    /// the disk is busy, and the log thread must never wait for the disk more than its
    /// writes do: while that thread is busy, requests are skipped and the pages stay
    /// cached, as they would without it. Only advice: where it fails (a file system that
    /// does not take it), nothing else changes.
    fn uncache(&mut self) {
        let upto = self.end.saturating_sub(CACHED_LOG_BYTES);
        let (from, last) = self.uncached;
        if upto < last + UNCACHE_STEP_BYTES {
            return;
        }
        let Some(len) = NonZeroU64::new(upto - from) else {
            return;
        };
        if let Some(requests) = self.uncacher.get_or_insert_with(start_uncacher) {
            let file = Arc::clone(&self.file);
            if requests.try_send(Uncache { file, from, len }).is_ok() {
                self.uncached = (last, upto);
            }
        }
    }

    /// Opens the file at its path again; if that fails, goes on with the open one.
    fn reopen(&mut self) {
        match LogFile::open(self.path.clone()) {
            Ok(reopened) => {
                self.file = reopened.file;
                (self.end, self.uncached) = (reopened.end, reopened.uncached);
                // What was lost is said first, so that the stamps stay in order.
                self.write(&[]);
                self.write(note("log reopened").as_bytes());
            }
            Err(e) => warn!(
                target: LOG_TARGET,
                "cannot reopen the log {}: {e}; still writing to the file open before",
                self.path.display()
            ),
        }
    }

    /// Writes `text`, after a note of what was lost if earlier writes failed. A failed
    /// write (disk full) loses that text, not the server.
    fn write(&mut self, text: &[u8]) {
        let mut file = &*self.file;
        let result = match &self.lost {
            Some((bytes, why)) => {
                let missing = note(&format!(
                    "log writes failed ({why}): up to {bytes} bytes lost before this"
                ));
                let said = file.write_all(missing.as_bytes());
                said.and_then(|()| file.write_all(text))
            }
            None => file.write_all(text),
        };
        if result.is_ok() {
            self.end += text.len() as u64;
            self.uncache();
        }
        match (result, &mut self.lost) {
            (Ok(()), lost) => {
                if lost.take().is_some() {
                    info!(target: LOG_TARGET, "log {} written again", self.path.display());
                }
            }
            (Err(_), Some((bytes, _))) => *bytes += text.len(),
            (Err(e), lost) => {
                warn!(
                    target: LOG_TARGET,
                    "cannot write the log {}: {e}; the server goes on, and the log will say \
                     how much is missing once it can be written again",
                    self.path.display()
                );
                *lost = Some((text.len(), e));
            }
        }
    }
}

/// Starts the thread that gives [`LogFile::uncache`]'s advice, named after the log thread
/// (`log-<Name>+`), and returns where to send it requests; `None` if it cannot be started.
/// It ends when the log file is dropped.
fn start_uncacher() -> Option<SyncSender<Uncache>> {
    let (requests, advised) = std::sync::mpsc::sync_channel::<Uncache>(1);
    let name = std::thread::current().name().unwrap_or("log").to_owned();
    let advise = move || {
        for Uncache { file, from, len } in advised {
            let _ = rustix::fs::fadvise(&*file, from, Some(len), Advice::DontNeed);
        }
    };
    let thread = std::thread::Builder::new().name(format!("{name}+"));
    thread.spawn(advise).ok()?;
    Some(requests)
}

/// A line of the log thread's own, `<stamp> - <text>`, as notes are logged.
fn note(text: &str) -> String {
    let stamp = humantime::format_rfc3339_micros(SystemTime::now());
    format!("{stamp} - {text}\n")
}

/// The log thread: every interval, takes the pending text and writes it to the file; with
/// nothing to take, sleeps until woken.
fn write_out(shared: &Shared, mut file: LogFile) {
    let mut spare = Vec::new();
    loop {
        #[cfg(test)]
        shared.turns.fetch_add(1, Ordering::Relaxed);
        if shared.reopen.swap(false, Ordering::AcqRel) {
            file.reopen();
        }
        let closed = shared.closed.load(Ordering::Acquire);
        let (dropped, idle) = {
            let mut pending = shared.lock();
            std::mem::swap(&mut pending.text, &mut spare);
            pending.woken = false;
            // Set under the lock: a line logged after this sees it and wakes the thread.
            pending.idle = spare.is_empty() && pending.dropped == 0;
            (std::mem::take(&mut pending.dropped), pending.idle)
        };
        if dropped > 0 {
            shared.events_dropped.fetch_add(dropped, Ordering::Relaxed);
            let full = note(&format!("log buffer full: {dropped} events not logged"));
            spare.extend_from_slice(full.as_bytes());
        }
        if !spare.is_empty() {
            file.write(&spare);
            shared
                .bytes_written
                .fetch_add(spare.len() as u64, Ordering::Relaxed);
        }
        spare.clear();
        if spare.capacity() > KEPT_BUFFER_BYTES {
            spare = Vec::new();
        }
        if closed {
            return;
        }
        if idle {
            std::thread::park();
        } else {
            std::thread::park_timeout(LOG_POLL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// Opens `<dir>/Clark.log`, writing every line.
    fn open_in(dir: &Path) -> (ServerLog, LogWriter) {
        let config = LogConfig {
            dir: dir.to_owned(),
            lines: LogLines::All,
        };
        ServerLog::open(&config, "Clark").unwrap()
    }

    #[test]
    fn every_line_in_and_out_is_written_with_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = open_in(dir.path());
        log.note(Some(3), "opened from 127.0.0.1:5000");
        log.line_in(3, SystemTime::now(), b"WHATSAT a 1 1");
        log.lines_out(3, SystemTime::now(), b"AT x\n{\n}\n\n");
        log.line_in(3, SystemTime::now(), b"bad \xff");
        log.line_out(3, SystemTime::now(), "AT y");
        log.each_line_out(4, SystemTime::now(), ["AT a", "AT b"]);
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
                "conn 3 > AT y",
                "conn 4 > AT a",
                "conn 4 > AT b",
            ]
        );
        let stamp = text.split(' ').next().unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
    }

    /// What a server's log gets over a short life, logged at `lines`: a start, a client's
    /// valid and invalid lines and their answers, a link's hello, snapshot and records, a
    /// link dropped, the client gone, a stop. Returns the log's lines without their stamps.
    fn a_short_life_at(lines: LogLines) -> Vec<String> {
        let (log, held) = ServerLog::held_at(lines);
        let t = SystemTime::now();
        log.note(None, "Clark listening on 127.0.0.1:10003");
        log.note_as(NoteKind::Connection, Some(1), "opened from 127.0.0.1:5000");
        log.line_in(1, t, b"IAMAT kiwi +1+1 1.5");
        log.line_out(1, t, "AT Clark +0.1 kiwi +1+1 1.5");
        log.line_in(1, t, b"WHATSAT kiwi 10 1");
        log.lines_out(1, t, b"AT Clark +0.1 kiwi +1+1 1.5\n{\n}\n\n");
        // Found invalid once parsed: handed to both, as a session does.
        log.line_in(1, t, b"iamat kiwi");
        log.invalid_in(1, t, b"iamat kiwi");
        log.invalid_out(1, t, b"? iamat kiwi\n");
        log.note_as(NoteKind::Server, Some(2), "link to Jaquez opened");
        log.lines_out(2, t, b"PEER Clark\nAT Clark +0.1 kiwi +1+1 1.5\n");
        log.each_line_out(2, t, ["AT Clark +0.2 kiwi +1+1 2.5"]);
        log.note_as(
            NoteKind::Failure,
            Some(2),
            "link to Jaquez dropped: write failed",
        );
        log.note_as(NoteKind::Connection, Some(1), "closed");
        log.note(None, "stopped");
        let text = held.take();
        text.lines()
            .map(|l| l.split_once(' ').unwrap().1.to_owned())
            .collect()
    }

    #[test]
    fn all_writes_every_line_in_and_out_and_every_note() {
        assert_eq!(
            a_short_life_at(LogLines::All),
            [
                "- Clark listening on 127.0.0.1:10003",
                "conn 1 - opened from 127.0.0.1:5000",
                "conn 1 < IAMAT kiwi +1+1 1.5",
                "conn 1 > AT Clark +0.1 kiwi +1+1 1.5",
                "conn 1 < WHATSAT kiwi 10 1",
                "conn 1 > AT Clark +0.1 kiwi +1+1 1.5",
                "conn 1 > {",
                "conn 1 > }",
                "conn 1 > ",
                "conn 1 < iamat kiwi",
                "conn 1 > ? iamat kiwi",
                "conn 2 - link to Jaquez opened",
                "conn 2 > PEER Clark",
                "conn 2 > AT Clark +0.1 kiwi +1+1 1.5",
                "conn 2 > AT Clark +0.2 kiwi +1+1 2.5",
                "conn 2 - link to Jaquez dropped: write failed",
                "conn 1 - closed",
                "- stopped",
            ]
        );
    }

    #[test]
    fn errors_writes_invalid_lines_connections_events_and_failures() {
        assert_eq!(
            a_short_life_at(LogLines::Errors),
            [
                "- Clark listening on 127.0.0.1:10003",
                "conn 1 - opened from 127.0.0.1:5000",
                "conn 1 < iamat kiwi",
                "conn 1 > ? iamat kiwi",
                "conn 2 - link to Jaquez opened",
                "conn 2 - link to Jaquez dropped: write failed",
                "conn 1 - closed",
                "- stopped",
            ]
        );
    }

    #[test]
    fn none_writes_only_the_servers_events_and_failures() {
        assert_eq!(
            a_short_life_at(LogLines::None),
            [
                "- Clark listening on 127.0.0.1:10003",
                "conn 2 - link to Jaquez opened",
                "conn 2 - link to Jaquez dropped: write failed",
                "- stopped",
            ]
        );
    }

    /// Text that must never be formatted.
    struct NeverFormatted;
    impl fmt::Display for NeverFormatted {
        fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
            panic!("formatted a note its level leaves out");
        }
    }

    #[test]
    fn what_a_level_leaves_out_is_never_formatted_nor_counted() {
        // A full buffer counts every event that reaches it as dropped: none here does.
        let full = |lines| {
            let (log, held) = ServerLog::held_at(lines);
            held.0.lock().text.resize(LOG_BUFFER_BYTES, b'.');
            (log, held)
        };
        let t = SystemTime::now();
        let valid_traffic = |log: &ServerLog| {
            log.line_in(1, t, b"IAMAT kiwi +1+1 1.5");
            log.line_out(1, t, "AT Clark +0.1 kiwi +1+1 1.5");
            log.lines_out(1, t, b"AT Clark +0.1 kiwi +1+1 1.5\n{\n}\n\n");
            log.each_line_out(2, t, ["AT Clark +0.1 kiwi +1+1 1.5"]);
        };
        let (errors, held) = full(LogLines::Errors);
        valid_traffic(&errors);
        assert_eq!(held.0.lock().dropped, 0);
        let (none, held) = full(LogLines::None);
        valid_traffic(&none);
        none.invalid_in(1, t, b"iamat kiwi");
        none.invalid_out(1, t, b"? iamat kiwi\n");
        none.note_as(NoteKind::Connection, Some(1), NeverFormatted);
        assert_eq!(held.0.lock().dropped, 0);
        // What a level keeps reaches the buffer (and is dropped, it being full).
        let (all, held) = full(LogLines::All);
        valid_traffic(&all);
        assert_eq!(held.0.lock().dropped, 4);
    }

    #[test]
    fn lines_of_one_instant_keep_their_own_connection_and_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = open_in(dir.path());
        let t1 = UNIX_EPOCH + Duration::new(1_700_000_000, 1_000);
        let t2 = t1 + Duration::from_micros(1);
        log.line_in(1, t1, b"a");
        log.line_in(1, t1, b"b");
        log.line_in(2, t1, b"c");
        log.lines_out(2, t1, b"d");
        log.lines_out(2, t2, b"e");
        log.line_in(1, t2, b"f");
        writer.close();
        let text = fs::read_to_string(dir.path().join("Clark.log")).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "2023-11-14T22:13:20.000001Z conn 1 < a",
                "2023-11-14T22:13:20.000001Z conn 1 < b",
                "2023-11-14T22:13:20.000001Z conn 2 < c",
                "2023-11-14T22:13:20.000001Z conn 2 > d",
                "2023-11-14T22:13:20.000002Z conn 2 > e",
                "2023-11-14T22:13:20.000002Z conn 1 < f",
            ]
        );
    }

    #[test]
    fn the_cached_stamp_is_humantimes_rfc3339_with_microseconds() {
        let mut cache = StampCache::default();
        let base = UNIX_EPOCH + std::time::Duration::from_secs(1_764_000_000);
        // Within one second, across a second and a day boundary, and back in time.
        for offset_us in [
            0,
            7,
            999_999,
            1_000_000,
            1_000_001,
            86_400_000_000,
            3,
            59_999_999,
        ] {
            let at = base + std::time::Duration::from_micros(offset_us);
            let mut out = Vec::new();
            cache.write(at, &mut out);
            let want = humantime::format_rfc3339_micros(at).to_string();
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    /// Waits (at most ten seconds) until the log file holds `text`.
    fn wait_for_file(path: &Path, text: &str) {
        for _ in 0..1000 {
            if fs::read_to_string(path).is_ok_and(|t| t.contains(text)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{text:?} never reached the log file");
    }

    #[test]
    fn an_idle_log_thread_sleeps_until_a_line_comes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Clark.log");
        let (log, writer) = open_in(dir.path());
        log.note(None, "first");
        wait_for_file(&path, "first");
        // Its next turn finds nothing; from then on it sleeps (polling, it would take ~50
        // turns in 100 ms).
        std::thread::sleep(Duration::from_millis(50));
        let turns = || writer.shared.turns.load(Ordering::Relaxed);
        let before = turns();
        std::thread::sleep(Duration::from_millis(100));
        let woke = turns() - before;
        assert!(woke <= 1, "the idle log thread took {woke} turns in 100 ms");
        // A line wakes it, and is written without waiting for a close.
        log.note(None, "second");
        wait_for_file(&path, "second");
        writer.close();
    }

    #[test]
    fn a_dropped_writer_writes_out_what_was_logged_and_ends_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (log, writer) = open_in(dir.path());
        let shared = Arc::clone(&writer.shared);
        log.note(None, "last words");
        drop(writer);
        let text = fs::read_to_string(dir.path().join("Clark.log")).unwrap();
        assert!(text.contains("last words"), "{text}");
        drop(log);
        // Only this test's reference is left: the thread, and its own, are gone.
        assert_eq!(Arc::strong_count(&shared), 1);
    }

    #[test]
    fn connections_are_numbered_from_one_across_clones() {
        let log = ServerLog::discard();
        let other = log.clone();
        assert_eq!(
            [log.next_conn(), other.next_conn(), log.next_conn()],
            [1, 2, 3]
        );
        assert_eq!(ServerLog::discard().next_conn(), 1, "a log of its own");
    }

    #[test]
    fn the_log_is_behind_once_more_waits_than_the_thread_takes_in_a_turn() {
        let (log, held) = ServerLog::held();
        let line = [b'x'; 1000];
        while !log.is_behind() {
            log.line_in(1, SystemTime::now(), &line);
        }
        assert!(held.take().len() >= WAKE_AT_BYTES);
        assert!(!log.is_behind());
        assert!(!ServerLog::discard().is_behind());
    }

    #[test]
    fn a_full_buffer_drops_events_and_the_file_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Clark.log");
        // No thread: the buffer fills as it would while the disk is stuck, then the
        // writer's loop runs once, as it does on close.
        let shared = Arc::new(Shared::default());
        let log = ServerLog::with(Some(Arc::clone(&shared)), LogLines::All);
        log.line_in(1, SystemTime::now(), b"kept");
        shared.lock().text.resize(LOG_BUFFER_BYTES, b'.');
        for _ in 0..5 {
            log.line_in(1, SystemTime::now(), b"lost");
        }
        shared.closed.store(true, Ordering::Release);
        write_out(&shared, LogFile::open(path.clone()).unwrap());
        let text = fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains(" conn 1 < kept\n"));
        assert!(!text.contains("lost"));
        assert!(
            text.ends_with(" - log buffer full: 5 events not logged\n"),
            "{}",
            &text[text.len() - 100..]
        );
    }

    /// How many bytes of `path` are in the page cache, as util-linux's `fincore` says.
    fn cached_bytes(path: &Path) -> u64 {
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("this test needs fincore (Debian's util-linux-extra)");
        let said = String::from_utf8_lossy(&out.stdout);
        said.trim()
            .parse()
            .unwrap_or_else(|_| panic!("fincore said {said:?}"))
    }

    #[test]
    fn a_long_log_hands_its_old_pages_back_to_the_kernel() {
        // On the project's disk, not in a temporary directory: a tmpfs /tmp keeps every page
        // of a file, having no disk to put them on.
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        fs::create_dir_all(&target).unwrap();
        let dir = tempfile::tempdir_in(&target).unwrap();
        let path = dir.path().join("Clark.log");
        let mut file = LogFile::open(path.clone()).unwrap();
        let text = vec![b'x'; 1 << 20];
        let total = CACHED_LOG_BYTES + 6 * UNCACHE_STEP_BYTES;
        // At ~200 MB a second, a pipelined server's pace: each range is on disk by the time
        // it is asked for the second time.
        for _ in 0..total / text.len() as u64 {
            file.write(&text);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), total);
        // What may stay: the last `CACHED_LOG_BYTES`, the range asked for only once, and a
        // step more; the rest is dropped once the advising thread has had its say.
        let most = CACHED_LOG_BYTES + 3 * UNCACHE_STEP_BYTES;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut cached = cached_bytes(&path);
        while cached > most && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            cached = cached_bytes(&path);
        }
        assert!(
            cached <= most,
            "{cached} bytes of a {total}-byte log still in the page cache"
        );
    }
}
