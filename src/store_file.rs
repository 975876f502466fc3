//! The store file: every record a server stores, appended as its AT line, so that what a
//! server acknowledged survives a crash and a restart of the whole herd.
//!
//! - **Written before the answer.** The store appends the records of a round of the event
//!   loop to a buffer and writes them with one `write(2)` ([`StoreFile::write_round`])
//!   before it answers the `Store`s they came in: a server killed afterwards loses none of
//!   them, as the kernel holds them. The fsync policy ([`Fsync`]) decides what a crash of
//!   the machine may lose: `always` answers only once a sync covering the records has
//!   returned (one sync for every record waiting at that moment: group commit),
//!   `everysec` syncs from a thread of its own once a second, `no` leaves it to the kernel.
//! - **Read at start** ([`StoreFile::open`]), before the server accepts anyone: newer wins,
//!   as for records from neighbors. A last line cut short by a crash is cut off the file
//!   (and said); a line that is not a record stops the start with the file and line named.
//! - **Rewritten** when the file is more than twice the size of the records held and more
//!   than `[store] rewrite_min_bytes` (64 MiB): a thread writes the records held to a new
//!   file and syncs it, records stored meanwhile go to both, and the new file then takes
//!   the old one's name. The store itself pauses twice: to list the records held (one
//!   pointer each) when the rewrite starts, and at its end to write what came meanwhile
//!   to the new file, sync it, rename it and sync the directory.
//! - **A failing disk** (full, say) loses records from the file, never the server: answers
//!   go on, the log and standard error say once that acknowledged records are no longer
//!   durable, and once writes work again the file is rewritten whole and durability is
//!   said to be back. Refusing IAMATs instead (as Redis refuses writes) would lose the
//!   fresh positions a herd exists to spread, on every server, to protect a copy that the
//!   neighbors hold anyway.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{error, info};
use tokio::sync::oneshot;

use crate::config::{Fsync, StoreConfig};
use crate::protocol::{Command, Record};
use crate::record_table::RecordTable;
use crate::server_log::{NoteKind, ServerLog};

/// The log target of what happens to the store file.
pub const LOG_TARGET: &str = "herd::store_file";

/// How often `everysec` syncs.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What syncs a file to the disk: `File::sync_data` but in tests, which hold it back.
pub(crate) type SyncFn = Arc<dyn Fn(&File) -> io::Result<()> + Send + Sync>;

/// Why a store file could not be used at start.
#[derive(Debug, thiserror::Error)]
pub enum StoreFileError {
    /// The file or its directory could not be opened, read or cut.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why not: in the message, so that it is said once.
        error: io::Error,
    },
    /// A whole line of the file is not a record: the file is not the server's store, or it
    /// is damaged; guessing would lose or invent positions.
    #[error("{path}, line {line}: not a record ({text:?}); move the file away to start without it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line: u64,
        /// Its start.
        text: String,
    },
}

/// What reading the file found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Records in the file (older ones included).
    pub lines: u64,
    /// Bytes cut off its end: a last line without its line ending, cut short by a crash.
    pub torn_bytes: u64,
}

/// The file a server's store appends to.
pub struct StoreFile {
    path: PathBuf,
    /// The file appended to.
    file: Arc<File>,
    /// The file the sync thread syncs (the same one, until a rewrite replaces it).
    synced: Arc<Mutex<Arc<File>>>,
    /// Records of this round, not written yet.
    pending: Vec<u8>,
    /// The file's size.
    file_bytes: u64,
    /// Syncs a file.
    sync: SyncFn,
    /// `everysec`: bytes written, which the sync thread compares with what it synced.
    written: Arc<AtomicU64>,
    /// `always`: where sync requests go, answered once a sync covers them.
    sync_requests: Option<mpsc::Sender<oneshot::Sender<io::Result<()>>>>,
    /// Tells the sync thread to end.
    stopping: Arc<AtomicBool>,
    syncer: Option<JoinHandle<()>>,
    /// Why writes fail, while they do (said once).
    failing: Option<String>,
    /// Records did not reach the file: it must be rewritten whole to be complete again.
    incomplete: bool,
    /// Records stored since the running rewrite's snapshot, for the new file.
    rewrite_tail: Option<Vec<u8>>,
    /// The smallest file rewritten.
    rewrite_min_bytes: u64,
    /// Smallest size at which to try a rewrite again after one failed.
    retry_rewrite_at: u64,
    log: ServerLog,
    name: String,
}

impl StoreFile {
    /// Opens (or creates) server `name`'s store file at `path`, offers every record in it to
    /// `records` (newer wins), cuts off a torn last line, and starts syncing by `fsync`.
    pub fn open(
        path: &Path,
        settings: &StoreConfig,
        records: &mut RecordTable,
        log: ServerLog,
        name: &str,
    ) -> Result<(StoreFile, Loaded), StoreFileError> {
        let sync: SyncFn = Arc::new(File::sync_data);
        Self::open_syncing_with(path, settings, sync, records, log, name)
    }

    /// As [`StoreFile::open`], syncing with `sync` (tests hold it back).
    pub(crate) fn open_syncing_with(
        path: &Path,
        settings: &StoreConfig,
        sync: SyncFn,
        records: &mut RecordTable,
        log: ServerLog,
        name: &str,
    ) -> Result<(StoreFile, Loaded), StoreFileError> {
        let io_error = |error| StoreFileError::Io {
            path: path.to_owned(),
            error,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_error)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_error)?;
        let loaded = load(path, &file, records)?;
        let file_bytes = file.metadata().map_err(io_error)?.len();
        let file = Arc::new(file);
        let synced = Arc::new(Mutex::new(Arc::clone(&file)));
        let written = Arc::new(AtomicU64::new(file_bytes));
        let stopping = Arc::new(AtomicBool::new(false));
        let (sync_requests, syncer) = match settings.fsync {
            Fsync::Always => {
                let (requests, waiting) = mpsc::channel();
                let work =
                    sync_when_asked(waiting, Arc::clone(&synced), Arc::clone(&sync), log.clone());
                (
                    Some(requests),
                    Some(spawn_named(name, work).map_err(io_error)?),
                )
            }
            Fsync::EverySec => {
                let every = sync_every_second(
                    Arc::clone(&synced),
                    Arc::clone(&sync),
                    Arc::clone(&written),
                    Arc::clone(&stopping),
                    log.clone(),
                );
                (None, Some(spawn_named(name, every).map_err(io_error)?))
            }
            Fsync::No => (None, None),
        };
        let store_file = StoreFile {
            path: path.to_owned(),
            file,
            synced,
            pending: Vec::new(),
            file_bytes,
            sync,
            written,
            sync_requests,
            stopping,
            syncer,
            failing: None,
            incomplete: false,
            rewrite_tail: None,
            rewrite_min_bytes: settings.rewrite_min_bytes,
            retry_rewrite_at: 0,
            log,
            name: name.to_owned(),
        };
        Ok((store_file, loaded))
    }

    /// Adds a record stored this round, to be written with the others.
    pub fn append(&mut self, record: &Record) {
        for buffer in [Some(&mut self.pending), self.rewrite_tail.as_mut()]
            .into_iter()
            .flatten()
        {
            buffer.extend_from_slice(record.line().as_bytes());
            buffer.push(b'\n');
        }
    }

    /// Whether records wait to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes the round's records (one `write(2)`), and with `always` returns what answers
    /// once a sync covers them. A write that fails loses them from the file, not the server.
    pub fn write_round(&mut self) -> Option<oneshot::Receiver<io::Result<()>>> {
        if self.pending.is_empty() {
            return None;
        }
        let written = (&*self.file).write_all(&self.pending);
        let bytes = self.pending.len() as u64;
        self.pending.clear();
        if self.pending.capacity() > 1 << 20 {
            self.pending = Vec::new();
        }
        match written {
            Ok(()) => {
                self.file_bytes += bytes;
                self.written.fetch_add(bytes, Ordering::Relaxed);
                if self.failing.take().is_some() {
                    // Those lost meanwhile are missing from the file: it is rewritten whole.
                    self.incomplete = true;
                }
            }
            Err(e) => {
                // Part of the batch may have reached the file, a line cut short: cut it off,
                // so that the next write starts a line of its own. The records lost are
                // written again by a rewrite.
                let _ = self.file.set_len(self.file_bytes);
                self.incomplete = true;
                if self.failing.is_none() {
                    let note = format!(
                        "writing {} failed ({e}): records acknowledged from now on are not \
                         durable; answers go on, and the file is rewritten once writes work",
                        self.path.display()
                    );
                    error!(target: LOG_TARGET, "{}: {note}", self.name);
                    self.log.note_as(NoteKind::Failure, None, note);
                    self.failing = Some(e.to_string());
                }
                return None;
            }
        }
        let requests = self.sync_requests.as_ref()?;
        let (answer, synced) = oneshot::channel();
        match requests.send(answer) {
            Ok(()) => Some(synced),
            Err(_) => None,
        }
    }

    /// Whether the file should be rewritten from the records held, whose lines take
    /// `held_bytes`: it is incomplete, or more than twice that size and large.
    pub fn wants_rewrite(&self, held_bytes: u64) -> bool {
        if self.rewrite_tail.is_some() || self.failing.is_some() {
            return false;
        }
        self.incomplete
            || (self.file_bytes > 2 * held_bytes
                && self.file_bytes > self.rewrite_min_bytes
                && self.file_bytes >= self.retry_rewrite_at)
    }

    /// Starts a rewrite from `lines`, the records held: a thread writes them to a new file
    /// and syncs it; the answer is that file, for [`StoreFile::finish_rewrite`]. Records
    /// appended meanwhile are kept for it too.
    pub fn start_rewrite(
        &mut self,
        lines: Vec<std::sync::Arc<str>>,
    ) -> oneshot::Receiver<io::Result<File>> {
        self.rewrite_tail = Some(Vec::new());
        let temporary = self.temporary_path();
        let sync = Arc::clone(&self.sync);
        let (done, finished) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("aof-{}*", self.name))
            .spawn(move || {
                let _ = done.send(write_whole(&temporary, &lines, &sync));
            });
        if let Err(e) = thread {
            let (done, finished) = oneshot::channel();
            let _ = done.send(Err(e));
            return finished;
        }
        finished
    }

    /// Ends a rewrite: the records stored meanwhile are added to the new file, which is
    /// synced and takes the old one's name. A rewrite that failed leaves the old file.
    pub fn finish_rewrite(&mut self, result: io::Result<File>) {
        let tail = self.rewrite_tail.take().unwrap_or_default();
        let temporary = self.temporary_path();
        let swapped = result.and_then(|new| {
            (&new).write_all(&tail)?;
            (self.sync)(&new)?;
            fs::rename(&temporary, &self.path)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
            Ok(new)
        });
        match swapped {
            Ok(new) => {
                let before = self.file_bytes;
                self.file_bytes = new.metadata().map_or(0, |m| m.len());
                self.written.store(self.file_bytes, Ordering::Relaxed);
                let new = Arc::new(new);
                self.file = Arc::clone(&new);
                if let Ok(mut synced) = self.synced.lock() {
                    *synced = new;
                }
                let note = format!(
                    "{} rewritten: {before} bytes down to {}",
                    self.path.display(),
                    self.file_bytes
                );
                info!(target: LOG_TARGET, "{}: {note}", self.name);
                self.log.note(None, note);
                if std::mem::take(&mut self.incomplete) {
                    let note = "acknowledged records are durable again";
                    info!(target: LOG_TARGET, "{}: {note}", self.name);
                    self.log.note(None, note);
                }
            }
            Err(e) => {
                let _ = fs::remove_file(&temporary);
                // Not again until the file has grown by half.
                self.retry_rewrite_at = self.file_bytes + self.file_bytes / 2;
                let note = format!(
                    "rewriting {} failed ({e}); the old file is kept",
                    self.path.display()
                );
                error!(target: LOG_TARGET, "{}: {note}", self.name);
                self.log.note_as(NoteKind::Failure, None, note);
            }
        }
    }

    /// Writes what is pending, syncs, and ends the sync thread (the server is stopping).
    pub fn close(&mut self) {
        let _ = self.write_round();
        if self.failing.is_none() {
            let _ = (self.sync)(&self.file);
        }
        self.stop_syncer();
    }

    fn stop_syncer(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.sync_requests = None;
        if let Some(thread) = self.syncer.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }

    fn temporary_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".rewrite");
        PathBuf::from(name)
    }
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        self.stop_syncer();
    }
}

/// Reads the file's records into `records`; cuts off a torn last line.
fn load(path: &Path, file: &File, records: &mut RecordTable) -> Result<Loaded, StoreFileError> {
    let io_error = |error| StoreFileError::Io {
        path: path.to_owned(),
        error,
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut loaded = Loaded::default();
    let mut line = Vec::new();
    let mut offset = 0u64;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_error)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            // Cut short by a crash: it was never acknowledged (the answer waits for the
            // whole write), and the next record must start on a line of its own.
            file.set_len(offset).map_err(io_error)?;
            loaded.torn_bytes = n as u64;
            break;
        }
        offset += n as u64;
        loaded.lines += 1;
        match Command::parse(&line[..n - 1]) {
            Command::At(record) => {
                records.offer(record);
            }
            _ => {
                let text = String::from_utf8_lossy(&line[..(n - 1).min(80)]).into_owned();
                return Err(StoreFileError::Corrupt {
                    path: path.to_owned(),
                    line: loaded.lines,
                    text,
                });
            }
        }
    }
    Ok(loaded)
}

/// Writes `lines` to a new file at `path` and syncs it.
fn write_whole(path: &Path, lines: &[std::sync::Arc<str>], sync: &SyncFn) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let mut writer = io::BufWriter::with_capacity(1 << 20, &file);
    for line in lines {
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")?;
    }
    writer.flush()?;
    drop(writer);
    sync(&file)?;
    // Appended to from now on.
    OpenOptions::new().append(true).read(true).open(path)
}

fn spawn_named(name: &str, work: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("aof-{name}"))
        .spawn(work)
}

/// Says a failing sync once per run of failures, in the log and on standard error: the
/// records acknowledged meanwhile may not survive a crash of the machine.
struct SyncFailures {
    log: ServerLog,
    failing: bool,
}

impl SyncFailures {
    fn new(log: ServerLog) -> SyncFailures {
        SyncFailures {
            log,
            failing: false,
        }
    }

    /// Takes the result of one sync.
    fn saw(&mut self, result: &io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                self.failing = true;
                let note = format!("syncing the store file failed: {e}");
                error!(target: LOG_TARGET, "{note}");
                self.log.note_as(NoteKind::Failure, None, note);
            }
            Err(_) => {}
        }
    }
}

/// `always`: answers each sync request once a sync that started after it returns; the
/// requests waiting when a sync starts share it (group commit). A failed sync is said (and
/// its rounds are answered all the same, as with a failed write).
fn sync_when_asked(
    waiting: mpsc::Receiver<oneshot::Sender<io::Result<()>>>,
    synced: Arc<Mutex<Arc<File>>>,
    sync: SyncFn,
    log: ServerLog,
) -> impl FnOnce() + Send + 'static {
    move || {
        let mut failures = SyncFailures::new(log);
        while let Ok(first) = waiting.recv() {
            let mut answers = vec![first];
            answers.extend(waiting.try_iter());
            let file = synced.lock().map(|f| Arc::clone(&f));
            let result = match file {
                Ok(file) => sync(&file),
                Err(_) => Err(io::Error::other("the store file's lock is poisoned")),
            };
            failures.saw(&result);
            for answer in answers {
                let _ = answer.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
        }
    }
}

/// `everysec`: syncs once a second when something was written since the last sync.
fn sync_every_second(
    synced: Arc<Mutex<Arc<File>>>,
    sync: SyncFn,
    written: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
    log: ServerLog,
) -> impl FnOnce() + Send + 'static {
    move || {
        let mut done = written.load(Ordering::Relaxed);
        let mut failures = SyncFailures::new(log);
        while !stopping.load(Ordering::Relaxed) {
            std::thread::park_timeout(SYNC_INTERVAL);
            let now = written.load(Ordering::Relaxed);
            if now == done {
                continue;
            }
            let Ok(file) = synced.lock().map(|f| Arc::clone(&f)) else {
                return;
            };
            let result = sync(&file);
            if result.is_ok() {
                done = now;
            }
            failures.saw(&result);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Condvar;

    fn record(line: &str) -> Record {
        match Command::parse(line.as_bytes()) {
            Command::At(record) => record,
            _ => panic!("not an AT line: {line}"),
        }
    }

    fn settings(fsync: Fsync, rewrite_min_bytes: u64) -> StoreConfig {
        StoreConfig {
            dir: None,
            fsync,
            rewrite_min_bytes,
        }
    }

    fn open(path: &Path, fsync: Fsync) -> (StoreFile, RecordTable, Loaded) {
        let mut table = RecordTable::default();
        let (file, loaded) = StoreFile::open(
            path,
            &settings(fsync, 0),
            &mut table,
            ServerLog::discard(),
            "T",
        )
        .unwrap();
        (file, table, loaded)
    }

    fn lines(table: &RecordTable) -> Vec<String> {
        let mut lines: Vec<String> = table.iter().map(|r| r.line().to_owned()).collect();
        lines.sort();
        lines
    }

    #[test]
    fn what_is_written_is_read_back_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d/T.aof");
        let (mut file, _, loaded) = open(&path, Fsync::No);
        assert_eq!(loaded, Loaded::default());
        for line in [
            "AT A +0.000000000 kiwi +1+1 100",
            "AT A +0.000000000 pear +1+1 5",
            "AT A +0.000000000 kiwi +2+2 200",
        ] {
            file.append(&record(line));
        }
        assert!(file.write_round().is_none(), "no sync to wait for");
        drop(file);
        let (_, table, loaded) = open(&path, Fsync::No);
        assert_eq!(loaded.lines, 3);
        assert_eq!(
            lines(&table),
            [
                "AT A +0.000000000 kiwi +2+2 200",
                "AT A +0.000000000 pear +1+1 5"
            ]
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_a_bad_line_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T.aof");
        let whole = "AT A +0.000000000 kiwi +1+1 100\n";
        std::fs::write(&path, format!("{whole}AT A +0.000000000 pe")).unwrap();
        let (mut file, table, loaded) = open(&path, Fsync::No);
        assert_eq!(loaded.torn_bytes, 20);
        assert_eq!(table.len(), 1);
        // What comes next starts on a line of its own.
        file.append(&record("AT A +0.000000000 pear +1+1 1"));
        file.write_round();
        drop(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{whole}AT A +0.000000000 pear +1+1 1\n"));

        std::fs::write(&path, format!("{whole}IAMAT kiwi +1+1 1\n{whole}")).unwrap();
        let mut table = RecordTable::default();
        let opened = StoreFile::open(
            &path,
            &settings(Fsync::No, 0),
            &mut table,
            ServerLog::discard(),
            "T",
        );
        let error = opened.err().expect("a bad line was taken").to_string();
        assert!(
            error.contains("T.aof, line 2: not a record") && error.contains("IAMAT kiwi"),
            "{error}"
        );
    }

    /// A sync that waits until the test lets it go, and counts the syncs done.
    #[derive(Default)]
    pub(crate) struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        syncs: AtomicU64,
    }

    impl Gate {
        pub(crate) fn sync_fn(gate: &Arc<Gate>) -> SyncFn {
            let gate = Arc::clone(gate);
            Arc::new(move |file: &File| {
                let mut open = gate.open.lock().unwrap();
                while !*open {
                    open = gate.opened.wait(open).unwrap();
                }
                gate.syncs.fetch_add(1, Ordering::SeqCst);
                file.sync_data()
            })
        }

        pub(crate) fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    #[tokio::test]
    async fn with_always_a_round_is_answered_only_once_a_sync_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let mut table = RecordTable::default();
        let (mut file, _) = StoreFile::open_syncing_with(
            &dir.path().join("T.aof"),
            &settings(Fsync::Always, 0),
            Gate::sync_fn(&gate),
            &mut table,
            ServerLog::discard(),
            "T",
        )
        .unwrap();
        file.append(&record("AT A +0.000000000 kiwi +1+1 1"));
        let mut first = file.write_round().expect("always waits for a sync");
        file.append(&record("AT A +0.000000000 kiwi +1+1 2"));
        let second = file.write_round().expect("always waits for a sync");
        let early = tokio::time::timeout(Duration::from_millis(200), &mut first).await;
        assert!(early.is_err(), "answered before the sync");
        assert_eq!(gate.syncs.load(Ordering::SeqCst), 0);
        gate.open();
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        // The two rounds waiting together shared syncs: at most one each, at least one.
        let syncs = gate.syncs.load(Ordering::SeqCst);
        assert!((1..=2).contains(&syncs), "{syncs} syncs");
    }

    #[tokio::test]
    async fn with_always_a_failed_sync_is_said_once_and_its_rounds_still_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (log, held) = ServerLog::held();
        let mut table = RecordTable::default();
        let failing: SyncFn = Arc::new(|_: &File| Err(io::Error::other("disk on fire")));
        let (mut file, _) = StoreFile::open_syncing_with(
            &dir.path().join("T.aof"),
            &settings(Fsync::Always, 0),
            failing,
            &mut table,
            log,
            "T",
        )
        .unwrap();
        for time in 1..=3 {
            file.append(&record(&format!("AT A +0.000000000 kiwi +1+1 {time}")));
            let synced = file.write_round().expect("always waits for a sync");
            let error = synced.await.unwrap().expect_err("the sync failed");
            assert!(error.to_string().contains("disk on fire"), "{error}");
        }
        let text = held.take();
        let said = text.matches("syncing the store file failed: disk on fire");
        assert_eq!(said.count(), 1, "{text}");
    }

    #[tokio::test]
    async fn a_rewrite_keeps_what_is_held_and_what_came_meanwhile_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T.aof");
        let (mut file, mut table, _) = open(&path, Fsync::EverySec);
        // One client reported 500 times: the file holds 500 lines, the store one record.
        for time in 1..=500 {
            let r = record(&format!("AT A +0.000000000 kiwi +1+1 {time}"));
            table.offer(r.clone());
            file.append(&r);
        }
        file.write_round();
        assert!(file.wants_rewrite(table.line_bytes()));
        let held = table.iter().map(Record::shared_line).collect();
        let rewritten = file.start_rewrite(held);
        // Stored while the rewrite runs: both files get it.
        let meanwhile = record("AT A +0.000000000 pear +1+1 9");
        table.offer(meanwhile.clone());
        file.append(&meanwhile);
        file.write_round();
        file.finish_rewrite(rewritten.await.unwrap());
        assert!(!dir.path().join("T.aof.rewrite").exists());
        // And after: the new file is the one appended to.
        let after = record("AT A +0.000000000 fig +1+1 3");
        table.offer(after.clone());
        file.append(&after);
        file.write_round();
        drop(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let (_, reread, _) = open(&path, Fsync::No);
        assert_eq!(lines(&reread), lines(&table));
    }
}
