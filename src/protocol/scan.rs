//! The byte scanner under the parser: cutting a line into fields and checking decimal
//! numbers, eight bytes at a time. Apart from the commands because it is where the
//! parser's speed comes from, and its word tricks are tested here on their own.

/// The white-space set of the protocol: space, tab, CR, form feed, vertical tab.
///
/// `split_ascii_whitespace` is not used because it does not split on vertical tab.
pub(super) fn is_field_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0c | 0x0b)
}

/// Splits a line into its fields on runs of white space.
pub(super) fn fields(line: &str) -> Fields<'_> {
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
pub(super) struct Fields<'a> {
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
pub(super) fn bytes_below(word: u64, limit: u8) -> u64 {
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

/// Whether `s` is one or more ASCII digits.
pub(super) fn all_digits(s: &str) -> bool {
    !s.is_empty() && digit_run(s.as_bytes()) == s.len()
}

/// How many ASCII digits `bytes` starts with.
///
/// Eight bytes at a time while eight remain: a digit run in a field usually ends at a dot
/// or the next number's sign inside the first word read.
pub(super) fn digit_run(bytes: &[u8]) -> usize {
    let mut run = 0;
    while let Some(block) = bytes[run..].first_chunk::<8>() {
        let odd = non_digits(u64::from_le_bytes(*block));
        if odd != 0 {
            return run + (odd.trailing_zeros() / 8) as usize;
        }
        run += 8;
    }
    let rest = &bytes[run..];
    run + rest
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len())
}

/// The value of at most 19 ASCII digits, eight at a time while eight remain (a client
/// time's seconds and fraction are ten and nine digits).
pub(super) fn digits_value(digits: &[u8]) -> u64 {
    let mut value = 0;
    let mut rest = digits;
    while let Some((block, after)) = rest.split_first_chunk::<8>() {
        value = value * 100_000_000 + eight_digits_value(u64::from_le_bytes(*block));
        rest = after;
    }
    rest.iter()
        .fold(value, |v, &b| v * 10 + u64::from(b - b'0'))
}

/// The value of eight ASCII digits read as a little-endian word (the first digit, the most
/// significant, in the lowest byte): neighbors are combined into pairs, pairs into fours,
/// fours into the eight, each step one multiplication for every lane at once. No lane
/// carries into the next: a pair is at most 99, a four at most 9,999.
fn eight_digits_value(word: u64) -> u64 {
    let digits = word.wrapping_sub(u64::from_ne_bytes([b'0'; 8]));
    let pairs = (digits.wrapping_mul(10) + (digits >> 8)) & 0x00ff_00ff_00ff_00ff;
    let fours = (pairs.wrapping_mul(100) + (pairs >> 16)) & 0x0000_ffff_0000_ffff;
    (fours.wrapping_mul(10_000) + (fours >> 32)) & 0xffff_ffff
}

/// A decimal number without sign or exponent: `digits` or `digits.digits`.
///
/// Kept as its two digit strings so that range checks and unit changes are exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Decimal<'a> {
    pub(super) int: &'a str,
    pub(super) frac: &'a str,
}

impl<'a> Decimal<'a> {
    /// The whole of `s` as a decimal.
    #[inline(always)]
    pub(super) fn parse(s: &'a str) -> Option<Self> {
        match Decimal::prefix(s)? {
            (decimal, "") => Some(decimal),
            _ => None,
        }
    }

    /// The decimal `s` starts with, and what follows it: digits, then, if a dot follows
    /// them, the dot and the digits after it (at least one digit on each side of a dot).
    /// A field made of two numbers (a location) is read in one pass this way.
    ///
    /// Inlined into its few callers: called, its setup cost a third of its work.
    #[inline(always)]
    pub(super) fn prefix(s: &'a str) -> Option<(Self, &'a str)> {
        let int_len = digit_run(s.as_bytes());
        if int_len == 0 {
            return None;
        }
        let (int, rest) = s.split_at(int_len);
        let Some(after_dot) = rest.strip_prefix('.') else {
            return Some((Decimal { int, frac: "" }, rest));
        };
        let frac_len = digit_run(after_dot.as_bytes());
        if frac_len == 0 {
            return None;
        }
        let (frac, rest) = after_dot.split_at(frac_len);
        Some((Decimal { int, frac }, rest))
    }

    /// The whole part's value; `None` past `u64::MAX`.
    pub(super) fn int_value(&self) -> Option<u64> {
        let digits = self.int.as_bytes();
        // Nineteen digits are below 10^19 < u64::MAX: no check needed on the way.
        if digits.len() <= 19 {
            return Some(digits_value(digits));
        }
        digits.iter().try_fold(0u64, |v, &b| {
            v.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
    }

    /// Compares the value with a whole number, exactly.
    pub(super) fn cmp_int(&self, n: u64) -> std::cmp::Ordering {
        // More than u64 holds is larger than any limit used here.
        let int_value = self.int_value().unwrap_or(u64::MAX);
        int_value.cmp(&n).then_with(|| {
            if self.frac.bytes().all(|b| b == b'0') {
                std::cmp::Ordering::Equal
            } else {
                std::cmp::Ordering::Greater
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length from 0 to 19 digits, at and around the eight-digit blocks, against the
    /// standard library's reading of the same digits.
    #[test]
    fn digit_values_match_the_standard_parse_at_every_length() {
        for source in [
            "1796617457959498503",
            "9999999999999999999",
            "0000000000000000000",
            "1000000000000000000",
            "0123456789012345678",
            "9080706050403020100",
        ] {
            for len in 1..=source.len() {
                let digits = &source[..len];
                let expected: u64 = digits.parse().unwrap();
                assert_eq!(digits_value(digits.as_bytes()), expected, "{digits:?}");
            }
        }
        assert_eq!(digits_value(b""), 0);
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

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
        }
    }
}
