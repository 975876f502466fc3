//! Cutting a byte stream into lines, with a length limit that never ends the stream.
//!
//! tokio-util's `LinesCodec` stops decoding after a line that is too long and insists on
//! UTF-8; SPEC section 2 wants the too-long line answered with its first bytes, the rest of it
//! skipped and the connection kept, and bytes that are not UTF-8 answered, not fatal. This
//! module does exactly that, on bytes, with no I/O, so that it is tested on its own.

use bytes::{Bytes, BytesMut};

/// One line cut from the stream, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A whole line, at most the limit long.
    Complete(Bytes),
    /// A line over the limit: its first `limit` bytes. The rest of it is skipped.
    TooLong(Bytes),
    /// The bytes after the last line ending when the stream ended. A client's last line
    /// may come so (it is a command like any other); a record from a neighbor may not (it
    /// may be a record cut short by a dropped link).
    Unterminated(Bytes),
}

/// Cuts lines ending in `\n` (or `\r\n`) out of the bytes pushed into it.
#[derive(Debug)]
pub struct LineSplitter {
    /// The longest line accepted, in bytes, not counting its line ending.
    limit: usize,
    /// Bytes of a line whose end has not arrived yet (at most `limit + 1` of them).
    partial: BytesMut,
    /// Whether the rest of a too-long line is being skipped, up to its `\n`.
    skipping: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        LineSplitter {
            limit,
            partial: BytesMut::new(),
            skipping: false,
        }
    }

    /// Takes the bytes just read and appends every line they complete to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Line>) {
        while !data.is_empty() {
            let newline = memchr::memchr(b'\n', data);
            if self.skipping {
                match newline {
                    Some(i) => {
                        self.skipping = false;
                        data = &data[i + 1..];
                    }
                    None => return,
                }
                continue;
            }
            match newline {
                Some(i) => {
                    self.partial.extend_from_slice(&data[..i]);
                    data = &data[i + 1..];
                    let mut line = self.partial.split();
                    if line.last() == Some(&b'\r') {
                        line.truncate(line.len() - 1);
                    }
                    out.push(self.cut(line));
                }
                None => {
                    self.partial.extend_from_slice(data);
                    data = &[];
                    // One byte over the limit may still be the `\r` of a `\r\n` ending.
                    let over = self.partial.len() > self.limit + 1
                        || (self.partial.len() == self.limit + 1
                            && self.partial.last() != Some(&b'\r'));
                    if over {
                        let mut line = self.partial.split();
                        line.truncate(self.limit);
                        out.push(Line::TooLong(line.freeze()));
                        self.skipping = true;
                    }
                }
            }
        }
    }

    /// The stream ended: what follows the last line ending is an [`Line::Unterminated`] line.
    pub fn finish(&mut self, out: &mut Vec<Line>) {
        if !self.partial.is_empty() {
            let line = self.partial.split();
            out.push(match self.cut(line) {
                Line::Complete(line) => Line::Unterminated(line),
                other => other,
            });
        }
        self.skipping = false;
    }

    fn cut(&self, mut line: BytesMut) -> Line {
        if line.len() > self.limit {
            line.truncate(self.limit);
            Line::TooLong(line.freeze())
        } else {
            Line::Complete(line.freeze())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(limit: usize, chunks: &[&[u8]], eof: bool) -> Vec<Line> {
        let mut s = LineSplitter::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        if eof {
            s.finish(&mut out);
        }
        out
    }

    fn complete(s: &str) -> Line {
        Line::Complete(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn too_long(s: &str) -> Line {
        Line::TooLong(Bytes::copy_from_slice(s.as_bytes()))
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
            [
                complete("a"),
                Line::Unterminated(Bytes::from_static(b"last"))
            ]
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
    fn bytes_that_are_not_utf8_pass_through() {
        assert_eq!(
            split(10, &[b"\xff\xfe\n"], false),
            [Line::Complete(Bytes::from_static(b"\xff\xfe"))]
        );
    }
}
