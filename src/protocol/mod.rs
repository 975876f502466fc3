//! The wire protocol as pure values: no I/O, no actors.
//!
//! A line (already cut at its line ending, see [`crate::line`]) is parsed into a [`Command`];
//! anything that is not a valid command is a [`Command::Invalid`] value that gets answered,
//! never an error that unwinds. Answers are formatted here too, so that every byte a client
//! sees is decided in this module and tested in isolation.
//!
//! - this file: the commands ([`Command`], [`Iamat`], [`Whatsat`], [`Hello`]) and the
//!   answers to them;
//! - `record`: the location record an IAMAT becomes, and the AT line it travels as;
//! - `time`: client times and time differences, in integer nanoseconds;
//! - `place`: positions and radii, checked exactly on their decimal digits;
//! - `scan`: cutting a line into fields and checking numbers, eight bytes at a time.
//!
//! Numbers that must be exact (client time, the time difference, the radius in metres) are
//! handled as integers or decimal text, never through a float.

mod place;
mod record;
mod scan;
mod time;

pub use place::{Degrees, Location, Radius};
pub use record::{Record, client_hash};
pub use time::{ClientTime, Nanos, TimeDiff};

use scan::{all_digits, fields};

/// The longest client id a client may use, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 256;

/// The largest WHATSAT bound on the number of places.
pub const MAX_BOUND: u8 = 20;

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

pub(crate) fn client_id(field: &str) -> Option<&str> {
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

/// The answer to an invalid line: `? ` and the line as received, with U+FFFD for bytes that
/// are not UTF-8, and a line ending.
pub fn invalid_answer(line: &[u8]) -> String {
    format!("? {}\n", String::from_utf8_lossy(line))
}

/// The answer to a WHATSAT: the AT line, then the JSON with every run of
/// two or more newlines made one and trailing newlines removed, then two newlines.
pub fn whatsat_answer(record: &Record, json: &str) -> String {
    let json = json.trim_end_matches('\n');
    let mut answer = String::with_capacity(record.line().len() + json.len() + 3);
    answer.push_str(record.line());
    answer.push('\n');
    // Runs of text, each with the newline after it; a newline right after another is
    // left out.
    let mut rest = json;
    while let Some(end) = memchr::memchr(b'\n', rest.as_bytes()) {
        answer.push_str(&rest[..=end]);
        rest = rest[end + 1..].trim_start_matches('\n');
    }
    answer.push_str(rest);
    answer.push_str("\n\n");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::NANOS_PER_SEC;

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
            ("IAMAT a +34.5.6-118 1", false),
            ("IAMAT a +34-118.4.5 1", false),
            ("IAMAT a +34- 1", false),
            ("IAMAT a +34 1", false),
            ("IAMAT a +99999999999999999999999-0 1", false),
            ("IAMAT a +34-118 18446744073709551615.999999999", true),
            ("IAMAT a +34-118 18446744073709551616", false),
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
