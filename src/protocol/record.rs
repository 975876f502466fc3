//! A location record ([`Record`]): one client's position as the server that heard it wrote
//! it, the AT line kept whole and shared, with what the store orders and indexes it by.

use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};

use super::place::{Degrees, Location};
use super::time::{ClientTime, NANOS_PER_SEC, Nanos, TimeDiff, split_seconds};
use super::{Iamat, client_id};

/// A location record: one client's position as the server that heard it wrote it.
///
/// The AT line is kept whole and shared (`Arc`), because it is what every other server and
/// every WHATSAT copies byte for byte; beside it only what ordering needs (the client time)
/// and where the client id sits in the line. A server may hold millions of these, so the
/// position is parsed from the line again when a WHATSAT needs it, rather than stored.
/// The client id's hash rides along in what would otherwise be padding, so that a store
/// places and moves records without reading their lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    line: Arc<str>,
    /// The client time: whole seconds and nanoseconds (the ordering key).
    secs: u64,
    nanos: u32,
    /// Where the client id starts in `line`, and its length (at most 256 bytes).
    client_start: u32,
    client_len: u16,
    /// [`client_hash`] of the client id.
    client_hash: u32,
}

// A store holds millions of records: the hash must not make one bigger.
const _: () = assert!(std::mem::size_of::<Record>() == 40);

/// Hashes client ids, with a seed drawn once per process (so ids cannot be chosen to
/// collide).
static CLIENT_HASHER: LazyLock<hashbrown::DefaultHashBuilder> = LazyLock::new(Default::default);

/// The hash of a client id, as records carry it.
pub fn client_hash(client: &str) -> u32 {
    // Truncated to 32 bits: enough for tables of billions of slots.
    CLIENT_HASHER.hash_one(client) as u32
}

impl Record {
    /// The record a server makes from an IAMAT it received at `received`.
    pub fn from_iamat(server: &str, iamat: &Iamat<'_>, received: Nanos) -> Record {
        let diff = TimeDiff(received.0 - iamat.time.nanos.0);
        Self::assemble(
            server,
            |line| diff.write_to(line),
            iamat.client,
            iamat.location.text,
            &iamat.time,
        )
    }

    /// Parses an AT line sent by a neighbor: `line`, whose fields after `AT` are `f`.
    pub(super) fn parse_fields<'a>(
        line: &str,
        f: &mut impl Iterator<Item = &'a str>,
    ) -> Option<Record> {
        let server = f.next()?;
        let diff = f.next()?;
        let client = client_id(f.next()?)?;
        let location = Location::parse(f.next()?)?;
        let time = ClientTime::parse(f.next()?)?;
        if !TimeDiff::is_valid(diff) {
            return None;
        }
        // A neighbor sends the line as its origin wrote it, fields apart by single spaces:
        // then it is the record's line as it is. Any other spacing is rebuilt, so that
        // every server stores the same bytes.
        let fields = [server, diff, client, location.text, time.text];
        let mut space = "AT".len();
        let canonical = fields.iter().all(|field| {
            let here = line.as_bytes().get(space) == Some(&b' ');
            space += 1 + field.len();
            here
        }) && space == line.len();
        if canonical {
            let client_start = "AT".len() + 1 + server.len() + 1 + diff.len() + 1;
            return Some(Self::new(Arc::from(line), client_start, client, &time));
        }
        Some(Self::assemble(
            server,
            |line| line.push_str(diff),
            client,
            location.text,
            &time,
        ))
    }

    /// A record of `line`, in which `client` starts at `client_start`.
    fn new(line: Arc<str>, client_start: usize, client: &str, time: &ClientTime<'_>) -> Record {
        let (secs, nanos) = split_seconds(time.nanos.0.unsigned_abs());
        Record {
            line,
            secs: secs as u64,
            nanos,
            client_start: client_start as u32,
            client_len: client.len() as u16,
            client_hash: client_hash(client),
        }
    }

    /// Builds `AT <server> <diff> <client> <location> <time>`; `diff` appends its field.
    fn assemble(
        server: &str,
        diff: impl FnOnce(&mut String),
        client: &str,
        location: &str,
        time: &ClientTime<'_>,
    ) -> Record {
        // Built in a buffer kept for the thread, then copied once into the shared line.
        ASSEMBLY.with_borrow_mut(|line| {
            line.clear();
            line.push_str("AT ");
            line.push_str(server);
            line.push(' ');
            diff(line);
            line.push(' ');
            let client_start = line.len();
            for field in [client, " ", location, " ", time.text] {
                line.push_str(field);
            }
            Self::new(Arc::from(line.as_str()), client_start, client, time)
        })
    }

    /// The whole AT line, without a line ending.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The AT line, shared.
    pub fn shared_line(&self) -> Arc<str> {
        Arc::clone(&self.line)
    }

    /// [`client_hash`] of [`Record::client`], computed when the record was made.
    pub fn client_hash(&self) -> u32 {
        self.client_hash
    }

    /// The client this record is about.
    pub fn client(&self) -> &str {
        let start = self.client_start as usize;
        &self.line[start..start + usize::from(self.client_len)]
    }

    /// The server that heard the IAMAT this record was made from (the AT line's first field).
    pub fn server(&self) -> &str {
        let fields = &self.line["AT ".len()..];
        // A record's line is spaced canonically: one space ends the name. A byte loop, as
        // names are short (`split` sets up a vector search for every record a link brings).
        let end = fields.bytes().position(|b| b == b' ');
        &fields[..end.unwrap_or(fields.len())]
    }

    /// The client's time, in nanoseconds.
    pub fn time(&self) -> Nanos {
        Nanos(i128::from(self.secs) * NANOS_PER_SEC + i128::from(self.nanos))
    }

    /// The client's position, read from the line (which was checked when the record was made).
    pub fn position(&self) -> Option<Degrees> {
        let after_client = self.client_start as usize + usize::from(self.client_len) + 1;
        let location = self.line.get(after_client..)?.split(' ').next()?;
        Location::parse(location)?.degrees()
    }

    /// Whether this record should replace `other` (newer wins): a greater client time,
    /// or an equal one and a bytewise greater AT line, so that every server converges.
    pub fn supersedes(&self, other: &Record) -> bool {
        (self.secs, self.nanos, self.line.as_bytes())
            > (other.secs, other.nanos, other.line.as_bytes())
    }
}

thread_local! {
    /// Where [`Record::assemble`] builds a line before copying it into its `Arc`.
    static ASSEMBLY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}
