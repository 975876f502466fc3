//! Time as the protocol counts it: integer nanoseconds since the epoch ([`Nanos`]), a
//! client's time with the text it came as ([`ClientTime`]), and the signed difference an AT
//! line carries ([`TimeDiff`]). Never through a float: a float cannot hold 19 significant
//! digits.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use super::scan::{Decimal, digits_value};

/// Nanoseconds in a second.
pub(super) const NANOS_PER_SEC: i128 = 1_000_000_000;

/// What a fraction of `n` digits (the index, 0 to 9) is multiplied by to count nanoseconds.
const NANOS_SCALE: [u64; 10] = [
    1_000_000_000,
    100_000_000,
    10_000_000,
    1_000_000,
    100_000,
    10_000,
    1_000,
    100,
    10,
    1,
];

/// The client's POSIX time: whole seconds and nanoseconds, and the text it came as.
///
/// Digits past the ninth fraction digit are kept in `text` (the copy) but not in the value,
/// as the protocol says. Ordering compares the value only.
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
        // The first nine digits of the fraction, scaled to nanoseconds; any more are below
        // a nanosecond.
        let frac = &d.frac.as_bytes()[..d.frac.len().min(9)];
        let nanos = digits_value(frac) * NANOS_SCALE[frac.len()];
        Some(ClientTime {
            text,
            nanos: Nanos(i128::from(secs) * NANOS_PER_SEC + i128::from(nanos)),
        })
    }
}

/// A server's receive time minus the client's time, printed `+S.NNNNNNNNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeDiff(pub i128);

impl TimeDiff {
    /// Whether a field has the form this type prints: a sign, digits, a dot, nine digits.
    pub(super) fn is_valid(text: &str) -> bool {
        let Some(rest) = text.strip_prefix(['+', '-']) else {
            return false;
        };
        // Seconds, a dot and exactly nine digits.
        Decimal::parse(rest).is_some_and(|d| d.frac.len() == 9)
    }
}

impl TimeDiff {
    /// Appends the field as AT lines carry it: sign, seconds, a dot, nine digits.
    pub(super) fn write_to(&self, out: &mut String) {
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
pub(super) fn split_seconds(nanos: u128) -> (u128, u32) {
    let per_sec = NANOS_PER_SEC as u64;
    match u64::try_from(nanos) {
        Ok(n) => (u128::from(n / per_sec), (n % per_sec) as u32),
        Err(_) => (
            nanos / u128::from(per_sec),
            (nanos % u128::from(per_sec)) as u32,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_difference_field_is_a_sign_seconds_a_dot_and_nine_digits() {
        for (field, valid) in [
            ("+0.000000000", true),
            ("-86400.000000123", true),
            ("+123456789012345678901234.000000001", true),
            ("0.000000000", false),
            ("+0.00000000", false),
            ("+0.0000000000", false),
            ("+.000000000", false),
            ("+0.", false),
            ("+0", false),
            ("+0.00000000x", false),
            ("+0.000.000000", false),
            ("++0.000000000", false),
            ("", false),
        ] {
            assert_eq!(TimeDiff::is_valid(field), valid, "{field:?}");
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
}
