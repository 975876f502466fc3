//! The wire protocol of SPEC section 2 and 3, as pure values: no I/O, no actors.
//!
//! A line (already cut at its line ending, see [`crate::line`]) is parsed into a [`Command`];
//! anything that is not a valid command is a [`Command::Invalid`] value that gets answered,
//! never an error that unwinds. Answers are formatted here too, so that every byte a client
//! sees is decided in this one module and tested in isolation.
//!
//! Numbers that must be exact (client time, the time difference, the radius in metres) are
//! handled as integers or decimal text, never through a float.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest client id a client may use, in bytes (SPEC section 2).
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// The largest WHATSAT radius, in kilometres.
const MAX_RADIUS_KM: u64 = 50;

/// The largest WHATSAT bound on the number of places.
pub const MAX_BOUND: u8 = 20;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The white-space set of SPEC section 2: space, tab, CR, form feed, vertical tab.
///
/// `split_ascii_whitespace` is not used because it does not split on vertical tab.
fn is_field_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0c | 0x0b)
}

/// Splits a line into its fields on runs of white space.
fn fields(line: &str) -> Fields<'_> {
    Fields {
        line,
        next_block: 0,
        candidates: 0,
        block_start: 0,
        field_start: 0,
        ended: false,
    }
}

/// The fields of a line: the runs of bytes between separator bytes. The separators are
/// ASCII, and an ASCII byte is never part of a longer UTF-8 character, so every cut falls
/// between characters and no character is decoded.
///
/// The line is read eight bytes at a time: every separator is below `!` (0x21), and which
/// bytes of a word are below it takes a few instructions where testing byte by byte took a
/// few per byte (splitting is much of the parser's work). Only those bytes (in a valid
/// line, the separators themselves) are then looked at one by one.
struct Fields<'a> {
    line: &'a str,
    /// The block of eight bytes to read next.
    next_block: usize,
    /// The high bit of each byte below 0x21 in the block being read, not yet looked at.
    candidates: u64,
    /// Where the block being read starts in the line.
    block_start: usize,
    /// Where the field being read started: just after the last separator.
    field_start: usize,
    /// Whether the end of the line was reached (and the last field given out).
    ended: bool,
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a str;

    // Inlined into each of its callers (one per field), the iterator's state stays in
    // registers: ~200 instructions fewer per AT line under callgrind.
    #[inline(always)]
    fn next(&mut self) -> Option<&'a str> {
        let bytes = self.line.as_bytes();
        loop {
            while self.candidates != 0 {
                let at = self.block_start + (self.candidates.trailing_zeros() / 8) as usize;
                self.candidates &= self.candidates - 1;
                // A control byte that is not a separator is part of its field.
                if at < bytes.len() && is_field_separator(bytes[at]) {
                    let start = std::mem::replace(&mut self.field_start, at + 1);
                    if at > start {
                        return Some(&self.line[start..at]);
                    }
                }
            }
            self.block_start = self.next_block * 8;
            if self.block_start >= bytes.len() {
                if self.ended {
                    return None;
                }
                self.ended = true;
                let start = self.field_start;
                self.field_start = bytes.len();
                return (bytes.len() > start).then(|| &self.line[start..]);
            }
            self.next_block += 1;
            // The last block, if short, is read padded with bytes that are not candidates.
            let block = bytes[self.block_start..].first_chunk::<8>().copied();
            let word = u64::from_le_bytes(block.unwrap_or_else(|| {
                let mut padded = [b'x'; 8];
                let rest = &bytes[self.block_start..];
                padded[..rest.len()].copy_from_slice(rest);
                padded
            }));
            self.candidates = bytes_below(word, 0x21);
        }
    }
}

/// The high bit of every byte of a word: how [`bytes_below`] and [`non_digits`] mark bytes.
const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);

/// The high bit (0x80) of each byte of `word` whose value is below `limit` (at most 0x80),
/// and no other bit: exact for every byte, as no carry crosses from one byte to the next.
fn bytes_below(word: u64, limit: u8) -> u64 {
    const LOW_SEVEN: u64 = u64::from_ne_bytes([0x7f; 8]);
    // Adding 0x80 - limit to a byte's low seven bits sets its high bit exactly when they
    // are at least `limit`; a byte with its own high bit set is above every limit.
    let at_least = ((word & LOW_SEVEN) + u64::from_ne_bytes([0x80 - limit; 8])) | word;
    !at_least & HIGH_BITS
}

/// The high bit of each byte of `word` that is not an ASCII digit, and no other bit.
fn non_digits(word: u64) -> u64 {
    // `b ^ 0x30` is below 10 exactly for the digits `0x30..=0x39`.
    !bytes_below(word ^ u64::from_ne_bytes([b'0'; 8]), 10) & HIGH_BITS
}

/// A parsed line. Borrowed from the line, so that parsing allocates nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<'a> {
    /// `IAMAT client location time`: a client reports where it is.
    Iamat(Iamat<'a>),
    /// `WHATSAT client radius bound`: what is near a client.
    Whatsat(Whatsat<'a>),
    /// `PEER name`: a neighbor opens a herd link.
    Hello(Hello<'a>),
    /// `AT server diff client location time`: a location record sent by a neighbor.
    At(Record),
    /// Anything else; answered with `? ` and a copy of the line.
    Invalid,
}

impl<'a> Command<'a> {
    /// Parses one line (without its line ending).
    ///
    /// A line that is not UTF-8 is never a valid command: its answer is the `?` copy with
    /// U+FFFD in place of the bad bytes.
    pub fn parse(line: &'a [u8]) -> Command<'a> {
        let Ok(line) = std::str::from_utf8(line) else {
            return Command::Invalid;
        };
        let mut f = fields(line);
        let parsed = match f.next() {
            Some("IAMAT") => Iamat::from_fields(&mut f).map(Command::Iamat),
            Some("WHATSAT") => Whatsat::from_fields(&mut f).map(Command::Whatsat),
            Some("PEER") => f.next().map(|name| Command::Hello(Hello { name })),
            Some("AT") => Record::parse_fields(line, &mut f).map(Command::At),
            _ => None,
        };
        match parsed {
            // Every command has a fixed number of fields: a trailing one makes the line invalid.
            Some(cmd) if f.next().is_none() => cmd,
            _ => Command::Invalid,
        }
    }
}

/// `IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Iamat<'a> {
    /// The client id, as sent.
    pub client: &'a str,
    /// The position, with its text kept for the byte-exact copy.
    pub location: Location<'a>,
    /// The client's time, with its text kept for the byte-exact copy.
    pub time: ClientTime<'a>,
}

impl<'a> Iamat<'a> {
    fn from_fields(f: &mut impl Iterator<Item = &'a str>) -> Option<Self> {
        Some(Iamat {
            client: client_id(f.next()?)?,
            location: Location::parse(f.next()?)?,
            time: ClientTime::parse(f.next()?)?,
        })
    }
}

/// `WHATSAT kiwi.cs.ucla.edu 10 5`, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Whatsat<'a> {
    /// The client whose last position is the centre of the search.
    pub client: &'a str,
    /// The search radius.
    pub radius: Radius,
    /// At most this many places are returned (1..=20).
    pub bound: u8,
}

impl<'a> Whatsat<'a> {
    fn from_fields(f: &mut impl Iterator<Item = &'a str>) -> Option<Self> {
        Some(Whatsat {
            client: client_id(f.next()?)?,
            radius: Radius::parse(f.next()?)?,
            bound: parse_bound(f.next()?)?,
        })
    }
}

/// `PEER Clark`: the hello that opens a herd link, naming the sender.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello<'a> {
    /// The name of the server that dialled.
    pub name: &'a str,
}

fn client_id(field: &str) -> Option<&str> {
    (field.len() <= MAX_CLIENT_ID_BYTES).then_some(field)
}

/// The bound: an integer from 1 to 20, digits only (leading zeros allowed).
fn parse_bound(field: &str) -> Option<u8> {
    if !all_digits(field) {
        return None;
    }
    let bound: u8 = field.parse().ok()?;
    (1..=MAX_BOUND).contains(&bound).then_some(bound)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A decimal number without sign or exponent: `digits` or `digits.digits`.
///
/// Kept as its two digit strings so that range checks and unit changes are exact.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decimal<'a> {
    int: &'a str,
    frac: &'a str,
}

impl<'a> Decimal<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        // One pass, eight bytes at a time: digits and at most one dot, with digits on both
        // sides of it.
        let bytes = s.as_bytes();
        let mut dot = None;
        let mut check = |block_start: usize, word: u64| {
            let odd = non_digits(word);
            if odd == 0 {
                return Some(());
            }
            let at = block_start + (odd.trailing_zeros() / 8) as usize;
            // One byte that is not a digit, a dot, and the first dot.
            let one_dot = odd & (odd - 1) == 0 && bytes[at] == b'.' && dot.is_none();
            one_dot.then(|| dot = Some(at))
        };
        let (blocks, last) = bytes.as_chunks::<8>();
        for (i, block) in blocks.iter().enumerate() {
            check(i * 8, u64::from_le_bytes(*block))?;
        }
        if let (false, Some(end)) = (last.is_empty(), bytes.last_chunk::<8>()) {
            // The last eight bytes, of which those read already are taken for digits (the
            // low bytes of the word: shifted out, and digits shifted in).
            let seen = 8 - last.len();
            let word = u64::from_le_bytes(*end) >> (8 * seen);
            let zeros = u64::from_ne_bytes([b'0'; 8]) << (8 * last.len());
            check(bytes.len() - 8 + seen, word | zeros)?;
        } else if !last.is_empty() {
            // Shorter than a word: padded with digits, which change nothing.
            let mut padded = [b'0'; 8];
            padded[..last.len()].copy_from_slice(last);
            check(0, u64::from_le_bytes(padded))?;
        }
        let (int, frac) = match dot {
            Some(dot) => (&s[..dot], &s[dot + 1..]),
            None => (s, ""),
        };
        (!int.is_empty() && (dot.is_none() || !frac.is_empty())).then_some(Decimal { int, frac })
    }

    /// The whole part's value; `None` past `u64::MAX`.
    fn int_value(&self) -> Option<u64> {
        self.int.bytes().try_fold(0u64, |v, b| {
            v.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
    }

    /// Compares the value with a whole number, exactly.
    fn cmp_int(&self, n: u64) -> std::cmp::Ordering {
        let frac_zero = self.frac.bytes().all(|b| b == b'0');
        // More than u64 holds is larger than any limit used here.
        let int_value = self.int_value().unwrap_or(u64::MAX);
        int_value.cmp(&n).then(if frac_zero {
            std::cmp::Ordering::Equal
        } else {
            std::cmp::Ordering::Greater
        })
    }
}

/// A position in ISO 6709 decimal degrees, `+34.068930-118.445127`.
///
/// The text is kept for the byte-exact copy in AT lines, and checked exactly on its decimal
/// digits; the degrees are floats, read from the text only when a search needs them (an
/// IAMAT never does), because they only ever go to the places API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location<'a> {
    /// The field as the client sent it.
    pub text: &'a str,
    /// Where the longitude starts in `text`.
    split: usize,
}

impl<'a> Location<'a> {
    /// Parses `±DD[.D*]±DDD[.D*]`: each coordinate with its sign, latitude then longitude,
    /// within [-90, 90] and [-180, 180].
    pub fn parse(text: &'a str) -> Option<Self> {
        let (sign, rest) = text.as_bytes().split_first()?;
        let is_sign = |b: &u8| matches!(b, b'+' | b'-');
        if !is_sign(sign) {
            return None;
        }
        let split = rest.iter().position(is_sign)? + 1;
        let (lat, lng) = text.split_at(split);
        (within(lat, 90) && within(lng, 180)).then_some(Location { text, split })
    }

    /// The position in degrees, owning nothing (for records that outlive the line).
    pub fn degrees(&self) -> Option<Degrees> {
        let (lat, lng) = self.text.split_at(self.split);
        Some(Degrees {
            latitude: lat.parse().ok()?,
            longitude: lng.parse().ok()?,
        })
    }
}

/// Whether a signed coordinate is within ±limit degrees, checked exactly on its digits.
fn within(signed: &str, limit: u64) -> bool {
    Decimal::parse(&signed[1..]).is_some_and(|d| d.cmp_int(limit) != std::cmp::Ordering::Greater)
}

/// A position that owns its numbers, for messages and stored records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Degrees {
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
}

/// The client's POSIX time: whole seconds and nanoseconds, and the text it came as.
///
/// Digits past the ninth fraction digit are kept in `text` (the copy) but not in the value,
/// as SPEC section 2 says. Ordering compares the value only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientTime<'a> {
    /// The field as the client sent it.
    pub text: &'a str,
    /// The value, in nanoseconds since the epoch.
    pub nanos: Nanos,
}

/// A point in time as integer nanoseconds since the epoch: the unit of all time arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub i128);

impl From<SystemTime> for Nanos {
    fn from(t: SystemTime) -> Nanos {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Nanos(d.as_nanos() as i128),
            Err(e) => Nanos(-(e.duration().as_nanos() as i128)),
        }
    }
}

impl<'a> ClientTime<'a> {
    /// Parses `digits[.digits]`: no sign, no exponent; at most 20 digits of seconds.
    pub fn parse(text: &'a str) -> Option<Self> {
        let d = Decimal::parse(text)?;
        // u64 seconds reach year 584 billion; longer digit runs are refused, not wrapped.
        let secs = d.int_value()?;
        let mut nanos: u32 = 0;
        for i in 0..9 {
            let digit = d.frac.as_bytes().get(i).map_or(0, |b| b - b'0');
            nanos = nanos * 10 + u32::from(digit);
        }
        Some(ClientTime {
            text,
            nanos: Nanos(i128::from(secs) * NANOS_PER_SEC + i128::from(nanos)),
        })
    }
}

/// A WHATSAT radius: greater than 0 and at most 50 km, fraction allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct Radius {
    /// The radius in metres as exact decimal text (km x 1000), for the places API's URL.
    metres: String,
}

impl Radius {
    /// Parses `digits[.digits]` kilometres within (0, 50].
    pub fn parse(text: &str) -> Option<Radius> {
        let d = Decimal::parse(text)?;
        if d.cmp_int(0).is_le() || d.cmp_int(MAX_RADIUS_KM).is_gt() {
            return None;
        }
        // Move the decimal point three places right, then drop what is not significant.
        let frac = format!("{:0<3}", d.frac);
        let (whole, rest) = frac.split_at(3);
        let int = format!("{}{whole}", d.int);
        let int = int.trim_start_matches('0');
        let rest = rest.trim_end_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let metres = if rest.is_empty() {
            int.to_owned()
        } else {
            format!("{int}.{rest}")
        };
        Some(Radius { metres })
    }

    /// The radius in metres, exact decimal text (`10` km is `10000`, `0.0125` km is `12.5`).
    pub fn metres(&self) -> &str {
        &self.metres
    }
}

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
    fn parse_fields<'a>(line: &str, f: &mut impl Iterator<Item = &'a str>) -> Option<Record> {
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
        fields.split(' ').next().unwrap_or_default()
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

    /// Whether this record should replace `other` (SPEC section 3): a greater client time,
    /// or an equal one and a bytewise greater AT line, so that every server converges.
    pub fn supersedes(&self, other: &Record) -> bool {
        (self.secs, self.nanos, self.line.as_bytes())
            > (other.secs, other.nanos, other.line.as_bytes())
    }
}

/// A server's receive time minus the client's time, printed `+S.NNNNNNNNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeDiff(pub i128);

impl TimeDiff {
    /// Whether a field has the form this type prints: a sign, digits, a dot, nine digits.
    fn is_valid(text: &str) -> bool {
        let Some(rest) = text.strip_prefix(['+', '-']) else {
            return false;
        };
        match rest.bytes().position(|b| b == b'.') {
            Some(dot) => {
                all_digits(&rest[..dot]) && rest.len() - dot == 10 && all_digits(&rest[dot + 1..])
            }
            None => false,
        }
    }
}

impl TimeDiff {
    /// Appends the field as AT lines carry it: sign, seconds, a dot, nine digits.
    fn write_to(&self, out: &mut String) {
        out.push(if self.0 < 0 { '-' } else { '+' });
        let (secs, nanos) = split_seconds(self.0.unsigned_abs());
        let mut digits = itoa::Buffer::new();
        out.push_str(digits.format(secs));
        // 1_000_000_000 + nanos has ten digits: a 1, then the nine wanted.
        out.push('.');
        out.push_str(&digits.format(NANOS_PER_SEC as u32 + nanos)[1..]);
    }
}

impl fmt::Display for TimeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        self.write_to(&mut text);
        f.write_str(&text)
    }
}

/// Whole seconds and nanoseconds of a count of nanoseconds; in 64-bit arithmetic when it
/// fits (until the year 2554), which is several times faster than 128-bit division.
fn split_seconds(nanos: u128) -> (u128, u32) {
    let per_sec = NANOS_PER_SEC as u64;
    match u64::try_from(nanos) {
        Ok(n) => (u128::from(n / per_sec), (n % per_sec) as u32),
        Err(_) => (
            nanos / u128::from(per_sec),
            (nanos % u128::from(per_sec)) as u32,
        ),
    }
}

thread_local! {
    /// Where [`Record::assemble`] builds a line before copying it into its `Arc`.
    static ASSEMBLY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The answer to an invalid line: `? ` and the line as received, with U+FFFD for bytes that
/// are not UTF-8, and a line ending.
pub fn invalid_answer(line: &[u8]) -> String {
    format!("? {}\n", String::from_utf8_lossy(line))
}

/// The answer to a WHATSAT (SPEC section 2): the AT line, then the JSON with every run of
/// two or more newlines made one and trailing newlines removed, then two newlines.
pub fn whatsat_answer(record: &Record, json: &str) -> String {
    let json = json.trim_end_matches('\n');
    let mut answer = String::with_capacity(record.line.len() + json.len() + 3);
    answer.push_str(&record.line);
    answer.push('\n');
    let mut last_newline = false;
    for c in json.chars() {
        let newline = c == '\n';
        if !(newline && last_newline) {
            answer.push(c);
        }
        last_newline = newline;
    }
    answer.push_str("\n\n");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iamat(line: &str) -> Option<Iamat<'_>> {
        match Command::parse(line.as_bytes()) {
            Command::Iamat(i) => Some(i),
            _ => None,
        }
    }

    fn whatsat(line: &str) -> Option<Whatsat<'_>> {
        match Command::parse(line.as_bytes()) {
            Command::Whatsat(w) => Some(w),
            _ => None,
        }
    }

    #[test]
    fn time_differences_print_sign_seconds_and_nine_digits_at_any_size() {
        let beyond_u64 = i128::from(u64::MAX) * 3 + 7;
        for (nanos, want) in [
            (0, "+0.000000000".to_owned()),
            (-1, "-0.000000001".to_owned()),
            (1_500_000_000, "+1.500000000".to_owned()),
            (-86_400_000_000_123, "-86400.000000123".to_owned()),
            (
                beyond_u64,
                format!(
                    "+{}.{:09}",
                    beyond_u64 / 1_000_000_000,
                    beyond_u64 % 1_000_000_000
                ),
            ),
            (
                -beyond_u64,
                format!(
                    "-{}.{:09}",
                    beyond_u64 / 1_000_000_000,
                    beyond_u64 % 1_000_000_000
                ),
            ),
        ] {
            assert_eq!(TimeDiff(nanos).to_string(), want);
        }
    }

    #[test]
    fn iamat_accepts_the_spec_example() {
        let i = iamat("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503").unwrap();
        assert_eq!(i.client, "kiwi.cs.ucla.edu");
        assert_eq!(i.location.text, "+34.068930-118.445127");
        let degrees = i.location.degrees().unwrap();
        assert_eq!(degrees.latitude, 34.068930);
        assert_eq!(degrees.longitude, -118.445127);
        assert_eq!(i.time.nanos, Nanos(1_621_464_827_959_498_503));
    }

    #[test]
    fn fields_split_on_every_whitespace_of_the_spec() {
        for sep in [" ", "\t", "\r", "\x0c", "\x0b", " \t\x0b "] {
            let line = format!("{sep}IAMAT{sep}a{sep}+1-2{sep}3{sep}");
            assert!(iamat(&line).is_some(), "separator {sep:?}");
        }
    }

    #[test]
    fn other_whitespace_does_not_separate_fields() {
        // A no-break space is part of a field, so the line has too few fields.
        assert!(iamat("IAMAT\u{a0}a +1-2 3").is_none());
    }

    #[test]
    fn iamat_accept_and_reject_table() {
        let table = [
            ("IAMAT a +34.068930-118.445127 1621464827.959498503", true),
            ("IAMAT a +34-118 1621464827", true),
            ("IAMAT a -90+180 0", true),
            ("IAMAT a +90.000-180.0000 1", true),
            ("IAMAT a +00090-0180 1", true),
            ("IAMAT a +90.0000001+0 1", false),
            ("IAMAT a +0+180.1 1", false),
            ("IAMAT a +91+0 1", false),
            ("IAMAT a 34.1-118.4 1", false),
            ("IAMAT a +34.1118.4 1", false),
            ("IAMAT a +34.1-118.4-1 1", false),
            ("IAMAT a +34.-118.4 1", false),
            ("IAMAT a +.5-118.4 1", false),
            ("IAMAT a +3a-118 1", false),
            ("IAMAT a ++34-118 1", false),
            ("IAMAT a +34-118 +1", false),
            ("IAMAT a +34-118 -1", false),
            ("IAMAT a +34-118 1e9", false),
            ("IAMAT a +34-118 1.", false),
            ("IAMAT a +34-118 .5", false),
            ("IAMAT a +34-118 1.2.3", false),
            ("IAMAT a +34-118 99999999999999999999999", false),
            ("IAMAT a +34-118", false),
            ("IAMAT a +34-118 1 extra", false),
            ("iamat a +34-118 1", false),
        ];
        for (line, valid) in table {
            assert_eq!(iamat(line).is_some(), valid, "{line}");
        }
    }

    #[test]
    fn client_id_is_at_most_256_bytes() {
        let ok = format!("IAMAT {} +1+1 1", "x".repeat(256));
        let long = format!("IAMAT {} +1+1 1", "x".repeat(257));
        assert!(iamat(&ok).is_some());
        assert!(iamat(&long).is_none());
    }

    #[test]
    fn a_decimal_is_checked_at_every_position_of_every_length() {
        // Lengths that end on, before and past each eight-byte block.
        for len in 1..=26 {
            let digits = |p: usize, with: char| -> String {
                (0..len).map(|i| if i == p { with } else { '7' }).collect()
            };
            assert!(Decimal::parse(&"7".repeat(len)).is_some(), "{len} digits");
            for p in 0..len {
                let dotted = digits(p, '.');
                let inside = p > 0 && p < len - 1;
                assert_eq!(Decimal::parse(&dotted).is_some(), inside, "{dotted:?}");
                for bad in ['x', '/', ':', '\0', ' '] {
                    let text = digits(p, bad);
                    assert!(Decimal::parse(&text).is_none(), "{text:?}");
                }
                for q in p + 1..len {
                    let mut two: Vec<char> = dotted.chars().collect();
                    two[q] = '.';
                    let two: String = two.into_iter().collect();
                    assert!(Decimal::parse(&two).is_none(), "{two:?}");
                }
            }
        }
    }

    #[test]
    fn time_fraction_past_nine_digits_is_copied_but_not_counted() {
        let i = iamat("IAMAT a +1+1 1646265600.1234567899999").unwrap();
        assert_eq!(i.time.nanos, Nanos(1_646_265_600_123_456_789));
        assert_eq!(i.time.text, "1646265600.1234567899999");
        let i = iamat("IAMAT a +1+1 1646265600.1234567").unwrap();
        assert_eq!(i.time.nanos, Nanos(1_646_265_600_123_456_700));
    }

    #[test]
    fn whatsat_accept_and_reject_table() {
        let table = [
            ("WHATSAT a 10 5", true),
            ("WHATSAT a 50 20", true),
            ("WHATSAT a 50.000 1", true),
            ("WHATSAT a 0.001 1", true),
            ("WHATSAT a 10 05", true),
            ("WHATSAT a 50.0001 1", false),
            ("WHATSAT a 51 1", false),
            ("WHATSAT a 0 1", false),
            ("WHATSAT a 0.000 1", false),
            ("WHATSAT a -1 1", false),
            ("WHATSAT a +1 1", false),
            ("WHATSAT a 1e1 1", false),
            ("WHATSAT a 10 0", false),
            ("WHATSAT a 10 21", false),
            ("WHATSAT a 10 5.0", false),
            ("WHATSAT a 10 +5", false),
            ("WHATSAT a 10 99999999999", false),
            ("WHATSAT a 10", false),
            ("WHATSAT a 10 5 6", false),
        ];
        for (line, valid) in table {
            assert_eq!(whatsat(line).is_some(), valid, "{line}");
        }
    }

    #[test]
    fn radius_in_metres_is_exact() {
        let table = [
            ("10", "10000"),
            ("10.5", "10500"),
            ("0.0125", "12.5"),
            ("0.001", "1"),
            ("050", "50000"),
            ("1.23456789", "1234.56789"),
            ("0.0000001", "0.0001"),
        ];
        for (km, m) in table {
            assert_eq!(Radius::parse(km).unwrap().metres(), m, "{km}");
        }
    }

    #[test]
    fn other_lines_are_invalid() {
        for line in [
            "", "   ", "HELLO", "IAMAT", "WHATSAT", "AT", "PEER", "PEER a b",
        ] {
            assert_eq!(
                Command::parse(line.as_bytes()),
                Command::Invalid,
                "{line:?}"
            );
        }
        assert_eq!(Command::parse(b"IAMAT \xff +1+1 1"), Command::Invalid);
    }

    #[test]
    fn hello_names_the_sender() {
        assert_eq!(
            Command::parse(b"PEER Clark"),
            Command::Hello(Hello { name: "Clark" })
        );
    }

    #[test]
    fn time_difference_is_exact_and_signed() {
        let i = iamat("IAMAT kiwi +34.068930-118.445127 1621464827.959498503").unwrap();
        let r = Record::from_iamat("Clark", &i, Nanos(1_621_464_828_223_371_889));
        assert_eq!(
            r.line(),
            "AT Clark +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503"
        );
        let r = Record::from_iamat("Clark", &i, Nanos(1_621_464_827_000_000_000));
        assert!(
            r.line().starts_with("AT Clark -0.959498503 "),
            "{}",
            r.line()
        );
        let r = Record::from_iamat("Clark", &i, i.time.nanos);
        assert!(
            r.line().starts_with("AT Clark +0.000000000 "),
            "{}",
            r.line()
        );
    }

    #[test]
    fn time_difference_keeps_nanoseconds_a_float_would_lose() {
        let i = iamat("IAMAT a +1+1 1.000000001").unwrap();
        let r = Record::from_iamat("S", &i, Nanos(9_007_199_254_740_993_000_000_000));
        assert_eq!(
            r.line(),
            "AT S +9007199254740991.999999999 a +1+1 1.000000001"
        );
    }

    #[test]
    fn at_line_from_a_peer_round_trips_and_names_its_client() {
        let line = "AT Clark +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503";
        let Command::At(r) = Command::parse(line.as_bytes()) else {
            panic!("not an AT line")
        };
        assert_eq!(r.line(), line);
        assert_eq!(r.client(), "kiwi");
        assert_eq!(r.server(), "Clark");
        assert_eq!(r.time(), Nanos(1_621_464_827_959_498_503));
        let position = r.position().unwrap();
        assert_eq!(
            (position.latitude, position.longitude),
            (34.068930, -118.445127)
        );
        for bad in [
            "AT Clark 0.263873386 kiwi +34-118 1",
            "AT Clark +0.26387338 kiwi +34-118 1",
            "AT Clark +0.263873386 kiwi +34-218 1",
            "AT Clark +0.263873386 kiwi +34-118",
        ] {
            assert_eq!(Command::parse(bad.as_bytes()), Command::Invalid, "{bad}");
        }
    }

    #[test]
    fn an_at_line_spaced_otherwise_is_stored_as_its_origin_wrote_it() {
        let line = "AT Clark +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503";
        let Command::At(want) = Command::parse(line.as_bytes()) else {
            panic!("not an AT line")
        };
        for spaced in [
            " AT Clark +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            "AT Clark +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503\r",
            "AT\tClark +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            "AT Clark  +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503",
            "AT Clark +0.263873386\x0bkiwi +34.068930-118.445127\x0c1621464827.959498503",
        ] {
            let Command::At(got) = Command::parse(spaced.as_bytes()) else {
                panic!("not an AT line: {spaced:?}")
            };
            assert_eq!(got, want, "{spaced:?}");
            assert_eq!(got.client(), "kiwi", "{spaced:?}");
            assert_eq!(got.server(), "Clark", "{spaced:?}");
        }
    }

    #[test]
    fn newer_time_wins_and_equal_time_breaks_ties_bytewise() {
        let parse = |l: &str| match Command::parse(l.as_bytes()) {
            Command::At(r) => r,
            _ => panic!("{l}"),
        };
        let old = parse("AT Zed +0.000000000 c +1+1 100");
        let new = parse("AT Abe +0.000000000 c +1+1 100.000000001");
        assert!(new.supersedes(&old) && !old.supersedes(&new));
        let a = parse("AT Abe +0.000000000 c +1+1 100");
        let b = parse("AT Bob +0.000000000 c +1+1 100");
        assert!(b.supersedes(&a) && !a.supersedes(&b));
        assert!(!a.supersedes(&a.clone()));
        // Digits past the ninth do not count as newer time, only as a bytewise tie-break.
        let c = parse("AT Abe +0.000000000 c +1+1 100.0000000001");
        assert_eq!(c.time(), a.time());
    }

    #[test]
    fn invalid_answer_copies_the_line_with_replacement_characters() {
        assert_eq!(invalid_answer(b"WHATSAT x 1 1"), "? WHATSAT x 1 1\n");
        assert_eq!(invalid_answer(b"a\xffb"), "? a\u{fffd}b\n");
        assert_eq!(invalid_answer(b""), "? \n");
    }

    #[test]
    fn whatsat_answer_squeezes_newlines_and_ends_with_a_blank_line() {
        let i = iamat("IAMAT c +1+1 1").unwrap();
        let r = Record::from_iamat("S", &i, Nanos(1_000_000_000));
        let answer = whatsat_answer(&r, "{\n\n\n  \"a\": 1,\n\n  \"b\": 2\n}\n\n\n");
        assert_eq!(
            answer,
            "AT S +0.000000000 c +1+1 1\n{\n  \"a\": 1,\n  \"b\": 2\n}\n\n"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn coordinate(limit: u32) -> impl Strategy<Value = String> {
            (any::<bool>(), 0..=limit, proptest::option::of("[0-9]{1,9}")).prop_map(
                move |(neg, int, frac)| {
                    let sign = if neg { '-' } else { '+' };
                    match frac {
                        Some(f) if int < limit => format!("{sign}{int}.{f}"),
                        _ => format!("{sign}{int}"),
                    }
                },
            )
        }

        /// A field: one of `values` mostly, arbitrary bytes sometimes.
        fn field(values: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                12 => proptest::sample::select(values).prop_map(|v| v.as_bytes().to_vec()),
                1 => proptest::collection::vec(any::<u8>(), 1..4),
            ]
        }

        /// The fields of a line shaped like one of the commands, its word first.
        fn commandlike() -> impl Strategy<Value = Vec<Vec<u8>>> {
            const CLIENTS: &[&str] = &["kiwi", "Clark", "é", "a.b", "+1"];
            const LOCATIONS: &[&str] = &[
                "+34.068930-118.445127",
                "+90-180",
                "-90.000+180.0",
                "+90.0000001+0",
                "+34.-118",
                "+1+1+1",
                "34-118",
                "+34.068930",
                "-0+0",
            ];
            const TIMES: &[&str] = &[
                "1621464827.959498503",
                "0",
                "1.",
                "-1",
                "99999999999999999999999",
                "1.0000000000000000001",
                "18446744073709551615",
            ];
            const DIFFS: &[&str] = &["+0.263873386", "-0.5", "+0", "0.1", "+1.0000000001"];
            const NUMBERS: &[&str] = &["50", "20", "0", "21", "0.0125", "1e3", "-5", "05"];
            let word = |w: &'static str| Just(w.as_bytes().to_vec());
            prop_oneof![
                2 => (
                    word("IAMAT"),
                    field(CLIENTS),
                    field(LOCATIONS),
                    field(TIMES)
                )
                    .prop_map(|(a, b, c, d)| vec![a, b, c, d]),
                1 => (
                    word("WHATSAT"),
                    field(CLIENTS),
                    field(NUMBERS),
                    field(NUMBERS)
                )
                    .prop_map(|(a, b, c, d)| vec![a, b, c, d]),
                3 => (
                    word("AT"),
                    field(CLIENTS),
                    field(DIFFS),
                    field(CLIENTS),
                    field(LOCATIONS),
                    field(TIMES)
                )
                    .prop_map(|(a, b, c, d, e, f)| vec![a, b, c, d, e, f]),
                1 => (word("PEER"), field(CLIENTS)).prop_map(|(a, b)| vec![a, b]),
            ]
        }

        proptest! {
            #[test]
            fn fields_are_what_splitting_on_each_separator_gives(
                line in proptest::collection::vec(
                    prop_oneof![
                        Just(' '), Just('\t'), Just('\r'), Just('\x0b'), Just('\x0c'),
                        Just('\x01'), Just('\x1f'), Just('!'), Just('\u{a0}'), Just('é'),
                        proptest::char::range('\0', '\u{7f}'),
                    ],
                    0..40,
                ).prop_map(|chars| chars.into_iter().collect::<String>()),
            ) {
                let want: Vec<&str> = line
                    .split(|c: char| c.is_ascii() && is_field_separator(c as u8))
                    .filter(|f| !f.is_empty())
                    .collect();
                prop_assert_eq!(fields(&line).collect::<Vec<_>>(), want);
            }

            #[test]
            fn decimals_are_digits_with_at_most_one_dot_inside(
                text in proptest::collection::vec(
                    prop_oneof![
                        4 => proptest::char::range('0', '9'),
                        1 => Just('.'),
                        1 => proptest::char::range('\0', '\u{7f}'),
                        1 => Just('\u{ff}'),
                    ],
                    0..30,
                ).prop_map(|chars| chars.into_iter().collect::<String>()),
            ) {
                let want = match text.split_once('.') {
                    Some((int, frac)) => all_digits(int) && all_digits(frac),
                    None => all_digits(&text),
                };
                let got = Decimal::parse(&text);
                prop_assert_eq!(got.is_some(), want);
                if let Some(d) = got {
                    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
                    prop_assert_eq!((d.int, d.frac), (int, frac));
                }
            }

            #[test]
            fn bytes_below_marks_exactly_the_bytes_below_the_limit(
                word in any::<[u8; 8]>(),
                limit in 0u8..=0x80,
            ) {
                let want: [u8; 8] = word.map(|b| if b < limit { 0x80 } else { 0 });
                prop_assert_eq!(bytes_below(u64::from_le_bytes(word), limit), u64::from_le_bytes(want));
            }

            #[test]
            fn iamat_formats_and_parses_back(
                client in "[!-~]{1,256}",
                lat in coordinate(90),
                lng in coordinate(180),
                secs in 0u64..=u64::MAX,
                frac in proptest::option::of("[0-9]{1,15}"),
                received in any::<i64>(),
            ) {
                let time = match &frac { Some(f) => format!("{secs}.{f}"), None => secs.to_string() };
                let line = format!("IAMAT {client} {lat}{lng} {time}");
                let iamat = iamat(&line).expect("valid IAMAT");
                prop_assert_eq!(iamat.client, client.as_str());
                let record = Record::from_iamat("Clark", &iamat, Nanos(i128::from(received)));
                let Command::At(parsed) = Command::parse(record.line().as_bytes()) else {
                    return Err(TestCaseError::fail("AT line did not parse"));
                };
                prop_assert_eq!(parsed.client(), client.as_str());
                prop_assert_eq!(parsed.time(), iamat.time.nanos);
                prop_assert_eq!(&parsed, &record);
                // The difference printed is exactly received minus the client's time.
                let diff = record.line().split(' ').nth(2).unwrap_or_default();
                let (s, n) = diff[1..].split_once('.').unwrap_or_default();
                let magnitude = s.parse::<i128>().unwrap_or(-1) * NANOS_PER_SEC + n.parse::<i128>().unwrap_or(-1);
                let signed = if diff.starts_with('-') { -magnitude } else { magnitude };
                prop_assert_eq!(signed, i128::from(received) - iamat.time.nanos.0);
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            /// Lines shaped like the protocol's commands, each field drawn from good values,
            /// values just out of range or badly formed, and arbitrary bytes, with a field
            /// sometimes missing or one too many: most get deep into the parser.
            #[test]
            fn any_line_parses_without_panicking_and_records_read_back_the_same(
                (fields, separators, cut, extra) in (
                    commandlike(),
                    proptest::collection::vec(
                        proptest::sample::select(vec![" ", " ", " ", "\t", "  ", "\r", "\x0b"]),
                        6,
                    ),
                    0usize..16,
                    proptest::option::weighted(0.1, field(&["kiwi", "0"])),
                ),
            ) {
                let mut fields = fields;
                // Mostly whole; sometimes cut short, or one field longer.
                if cut < fields.len() && cut > 0 {
                    fields.truncate(cut);
                }
                fields.extend(extra);
                let mut line = Vec::new();
                for (k, field) in fields.iter().enumerate() {
                    if k > 0 {
                        line.extend_from_slice(separators[(k - 1) % separators.len()].as_bytes());
                    }
                    line.extend_from_slice(field);
                }
                match Command::parse(&line) {
                    Command::Iamat(iamat) => {
                        let record = Record::from_iamat("Clark", &iamat, Nanos(0));
                        let Command::At(parsed) = Command::parse(record.line().as_bytes()) else {
                            return Err(TestCaseError::fail("its record's AT line did not parse"));
                        };
                        prop_assert_eq!(parsed, record);
                    }
                    Command::At(record) => {
                        let Command::At(again) = Command::parse(record.line().as_bytes()) else {
                            return Err(TestCaseError::fail("a record's own line did not parse"));
                        };
                        prop_assert_eq!(again, record);
                    }
                    Command::Whatsat(_) | Command::Hello(_) => {}
                    Command::Invalid => {
                        let answer = invalid_answer(&line);
                        prop_assert!(answer.starts_with("? ") && answer.ends_with('\n'));
                    }
                }
            }
        }
    }
}
