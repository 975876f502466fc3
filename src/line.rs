//! Cutting a byte stream into lines, with a length limit that never ends the stream.
//!
//! tokio-util's `LinesCodec` stops decoding after a line that is too long and insists on
//! UTF-8; the protocol wants the too-long line answered with its first bytes, the rest of it
//! skipped and the connection kept, and bytes that are not UTF-8 answered, not fatal. This
//! module does exactly that, on bytes, with no I/O, so that it is tested on its own.

/// One line cut from the stream, without its line ending, borrowed from the bytes just
/// read (or, for a line that spans reads, from the splitter): nothing is copied or
/// allocated per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, at most the limit long.
    Complete(&'a [u8]),
    /// A line over the limit: its first `limit` bytes. The rest of it is skipped.
    TooLong(&'a [u8]),
    /// The bytes after the last line ending when the stream ended. A client's last line
    /// may come so (it is a command like any other); a record from a neighbor may not (it
    /// may be a record cut short by a dropped link).
    Unterminated(&'a [u8]),
}

impl<'a> Line<'a> {
    /// The line's bytes, however it ended (for a reader that treats all lines alike, such
    /// as one that only logs them).
    pub fn bytes(self) -> &'a [u8] {
        let (Line::Complete(bytes) | Line::TooLong(bytes) | Line::Unterminated(bytes)) = self;
        bytes
    }
}

use std::ops::ControlFlow;

/// A line that spans reads and grew past this is not kept at that size once taken.
const KEPT_PARTIAL_BYTES: usize = 4096;

/// Cuts lines ending in `\n` (or `\r\n`) out of the bytes pushed into it.
#[derive(Debug)]
pub struct LineSplitter {
    /// The longest line accepted, in bytes, not counting its line ending.
    limit: usize,
    /// Bytes of a line whose end has not arrived yet (at most `limit + 1` of them).
    partial: Vec<u8>,
    /// Whether the rest of a too-long line is being skipped, up to its `\n`.
    skipping: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        LineSplitter {
            limit,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// Takes the bytes just read and hands `each` every line they complete, in order.
    pub fn push(&mut self, data: &[u8], mut each: impl FnMut(Line<'_>)) {
        self.push_while(data, |line| {
            each(line);
            ControlFlow::Continue(())
        });
    }

    /// As [`LineSplitter::push`], but stops right after a line for which `each` says
    /// [`ControlFlow::Break`]: returns how many bytes of `data` were taken, so that a reader
    /// that must stop taking lines (its client owes too much) keeps the rest for later.
    pub fn push_while(
        &mut self,
        data: &[u8],
        mut each: impl FnMut(Line<'_>) -> ControlFlow<()>,
    ) -> usize {
        let mut rest = data;
        while !rest.is_empty() {
            let newline = memchr::memchr(b'\n', rest);
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.skipping = false;
                        rest = &rest[i + 1..];
                    }
                    None => rest = &[],
                }
                continue;
            }
            let flow = match newline {
                Some(i) if self.partial.is_empty() => {
                    let line = self.cut(without_cr(&rest[..i]));
                    rest = &rest[i + 1..];
                    each(line)
                }
                Some(i) => {
                    self.partial.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    let flow = each(self.cut(without_cr(&self.partial)));
                    self.clear_partial();
                    flow
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    rest = &[];
                    // One byte over the limit may still be the `\r` of a `\r\n` ending.
                    let over = self.partial.len() > self.limit + 1
                        || (self.partial.len() == self.limit + 1
                            && self.partial.last() != Some(&b'\r'));
                    if !over {
                        break;
                    }
                    let flow = each(Line::TooLong(&self.partial[..self.limit]));
                    self.clear_partial();
                    self.skipping = true;
                    flow
                }
            };
            if flow.is_break() {
                break;
            }
        }
        data.len() - rest.len()
    }

    /// The stream ended: what follows the last line ending is an [`Line::Unterminated`] line.
    pub fn finish(&mut self, mut each: impl FnMut(Line<'_>)) {
        if !self.partial.is_empty() {
            each(match self.cut(&self.partial) {
                Line::Complete(line) => Line::Unterminated(line),
                other => other,
            });
            self.clear_partial();
        }
        self.skipping = false;
    }

    fn cut<'a>(&self, line: &'a [u8]) -> Line<'a> {
        if line.len() > self.limit {
            Line::TooLong(&line[..self.limit])
        } else {
            Line::Complete(line)
        }
    }

    fn clear_partial(&mut self) {
        self.partial.clear();
        if self.partial.capacity() > KEPT_PARTIAL_BYTES {
            self.partial = Vec::new();
        }
    }
}

/// A line without the carriage return of a CRLF ending, as every line is taken.
pub(crate) fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line, owned, to compare.
    #[derive(Debug, PartialEq)]
    enum Owned {
        Complete(Vec<u8>),
        TooLong(Vec<u8>),
        Unterminated(Vec<u8>),
    }

    fn split(limit: usize, chunks: &[&[u8]], eof: bool) -> Vec<Owned> {
        let mut s = LineSplitter::new(limit);
        let mut out = Vec::new();
        let mut keep = |line: Line<'_>| {
            out.push(match line {
                Line::Complete(l) => Owned::Complete(l.to_vec()),
                Line::TooLong(l) => Owned::TooLong(l.to_vec()),
                Line::Unterminated(l) => Owned::Unterminated(l.to_vec()),
            })
        };
        for c in chunks {
            s.push(c, &mut keep);
        }
        if eof {
            s.finish(&mut keep);
        }
        out
    }

    fn complete(s: &str) -> Owned {
        Owned::Complete(s.as_bytes().to_vec())
    }

    fn too_long(s: &str) -> Owned {
        Owned::TooLong(s.as_bytes().to_vec())
    }

    #[test]
    fn lines_end_in_newline_or_crlf() {
        let out = split(100, &[b"a\nb\r\nc\r\r\n\n"], false);
        assert_eq!(
            out,
            [complete("a"), complete("b"), complete("c\r"), complete("")]
        );
    }

    #[test]
    fn lines_are_joined_across_reads() {
        let out = split(100, &[b"IAM", b"AT x", b"\r", b"\nWHAT"], false);
        assert_eq!(out, [complete("IAMAT x")]);
    }

    #[test]
    fn last_line_without_ending_is_kept_at_end_of_stream() {
        assert_eq!(
            split(100, &[b"a\nlast"], true),
            [complete("a"), Owned::Unterminated(b"last".to_vec())]
        );
        assert_eq!(split(100, &[b"a\n"], true), [complete("a")]);
    }

    #[test]
    fn too_long_line_is_cut_and_its_rest_skipped() {
        let out = split(4, &[b"abcdefgh", b"ijk\nok\n"], false);
        assert_eq!(out, [too_long("abcd"), complete("ok")]);
    }

    #[test]
    fn too_long_line_in_one_read_is_cut() {
        let out = split(4, &[b"abcdefgh\nok\n"], false);
        assert_eq!(out, [too_long("abcd"), complete("ok")]);
    }

    #[test]
    fn line_of_exactly_the_limit_is_whole_even_with_crlf_split_across_reads() {
        let out = split(4, &[b"abcd\r", b"\nabcd\n"], false);
        assert_eq!(out, [complete("abcd"), complete("abcd")]);
    }

    #[test]
    fn one_byte_over_the_limit_is_too_long() {
        assert_eq!(split(4, &[b"abcde\n"], false), [too_long("abcd")]);
        assert_eq!(split(4, &[b"abcde"], false), [too_long("abcd")]);
        assert_eq!(split(4, &[b"abcd\r\r"], false), [too_long("abcd")]);
    }

    #[test]
    fn too_long_last_line_at_end_of_stream_is_answered_once() {
        assert_eq!(split(4, &[b"abcdefgh"], true), [too_long("abcd")]);
    }

    #[test]
    fn taking_lines_can_stop_after_any_line_and_go_on_with_the_rest() {
        let input: &[u8] = b"a\nbb\r\ntoolong\nc\nd";
        for stop_after in 0..4 {
            let mut s = LineSplitter::new(4);
            let mut seen = Vec::new();
            let taken = s.push_while(input, |line| {
                seen.push(line.bytes().to_vec());
                if seen.len() > stop_after {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            assert_eq!(seen.len(), stop_after + 1, "stopped after {stop_after}");
            s.push(&input[taken..], |line| seen.push(line.bytes().to_vec()));
            s.finish(|line| seen.push(line.bytes().to_vec()));
            let want: [&[u8]; 5] = [b"a", b"bb", b"tool", b"c", b"d"];
            assert_eq!(seen, want, "stopped after {stop_after}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_pass_through() {
        assert_eq!(
            split(10, &[b"\xff\xfe\n"], false),
            [Owned::Complete(b"\xff\xfe".to_vec())]
        );
    }
}
