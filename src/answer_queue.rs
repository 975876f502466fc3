//! The answers a connection owes, in the order of its lines.
//!
//! Every line that gets an answer takes a place in the queue when it is read. Its answer
//! may be known at once (an invalid line's), known but not yet allowed out (an IAMAT's,
//! until the store and with it every link has the record), or worked out later (a
//! WHATSAT's, once the places API answers). Answers leave from the front only, so they
//! go out in line order whatever order they were known in. A pure type: the session
//! decides what goes in, the socket what comes out.

use std::collections::VecDeque;
use std::ops::Range;

use bytes::Bytes;

use crate::protocol::Record;

/// The answer a line gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// None: a neighbor's hello.
    Silent,
    /// An IAMAT's: the AT line of its record, written from the record itself.
    At(Record),
    /// A WHATSAT's.
    Text(Bytes),
    /// An invalid line's, `? ` and the line: the log keeps it at `errors` too.
    Invalid(Bytes),
}

impl Answer {
    /// The bytes it takes on the wire.
    pub fn len(&self) -> usize {
        match self {
            Answer::Silent => 0,
            Answer::At(record) => record.line().len() + 1,
            Answer::Text(text) | Answer::Invalid(text) => text.len(),
        }
    }

    /// Whether it takes no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One line's place in the queue.
#[derive(Debug)]
enum Slot {
    /// Its answer is being worked out.
    Waiting,
    /// Its answer is known, but may not go out until released.
    Held(Answer),
    /// Its answer goes out as soon as every line before it has had its own.
    Due(Answer),
}

/// The answers owed to one connection, by line number (the first line answered is 0).
#[derive(Debug, Default)]
pub struct AnswerQueue {
    /// One slot per line not yet answered, in line order.
    slots: VecDeque<Slot>,
    /// The number of the line whose answer is `slots[0]`.
    first: u64,
    /// Bytes of the answers known (held or due) and not yet taken.
    known_bytes: usize,
}

impl AnswerQueue {
    /// Takes a place for the next line, and returns its number.
    pub fn reserve(&mut self) -> u64 {
        self.slots.push_back(Slot::Waiting);
        self.next_line() - 1
    }

    /// The number the next line to reserve will get.
    pub fn next_line(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    /// Line `line`'s answer is known and may go out in its turn.
    pub fn fill(&mut self, line: u64, answer: Answer) {
        self.set(line, answer, Slot::Due);
    }

    /// Line `line`'s answer is known, but waits for [`AnswerQueue::release`].
    pub fn hold(&mut self, line: u64, answer: Answer) {
        self.set(line, answer, Slot::Held);
    }

    fn set(&mut self, line: u64, answer: Answer, slot: fn(Answer) -> Slot) {
        let Some(entry) = line
            .checked_sub(self.first)
            .and_then(|i| self.slots.get_mut(i as usize))
        else {
            return;
        };
        self.known_bytes += answer.len();
        *entry = slot(answer);
    }

    /// The held answers of `lines` may go out in their turn.
    pub fn release(&mut self, lines: Range<u64>) {
        let from = lines.start.saturating_sub(self.first) as usize;
        let to = (lines.end.saturating_sub(self.first) as usize).min(self.slots.len());
        for entry in self.slots.range_mut(from.min(to)..to) {
            *entry = match std::mem::replace(entry, Slot::Waiting) {
                Slot::Held(answer) => Slot::Due(answer),
                other => other,
            };
        }
    }

    /// Hands `each` the answers at the front that may go out, in line order, and forgets
    /// them.
    pub fn take_due(&mut self, mut each: impl FnMut(Answer)) {
        while let Some(Slot::Due(_)) = self.slots.front() {
            if let Some(Slot::Due(answer)) = self.slots.pop_front() {
                self.known_bytes -= answer.len();
                each(answer);
            }
            self.first += 1;
        }
    }

    /// Lines whose answers have not been taken.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether every line read has had its answer taken.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes of the answers known and not yet taken.
    pub fn known_bytes(&self) -> usize {
        self.known_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &'static str) -> Answer {
        Answer::Text(Bytes::from_static(s.as_bytes()))
    }

    fn due(queue: &mut AnswerQueue) -> Vec<Answer> {
        let mut out = Vec::new();
        queue.take_due(|a| out.push(a));
        out
    }

    #[test]
    fn answers_leave_in_line_order_whatever_order_they_are_known_in() {
        let mut queue = AnswerQueue::default();
        let lines: Vec<u64> = (0..3).map(|_| queue.reserve()).collect();
        assert_eq!(lines, [0, 1, 2]);
        queue.fill(2, text("c\n"));
        queue.fill(1, text("b\n"));
        assert_eq!(due(&mut queue), [], "line 0 has no answer yet");
        queue.fill(0, text("a\n"));
        assert_eq!(due(&mut queue), [text("a\n"), text("b\n"), text("c\n")]);
        assert!(queue.is_empty());
        assert_eq!(queue.reserve(), 3);
    }

    #[test]
    fn a_held_answer_and_those_behind_it_wait_for_its_release() {
        let mut queue = AnswerQueue::default();
        for _ in 0..3 {
            queue.reserve();
        }
        queue.hold(0, text("held\n"));
        queue.fill(1, Answer::Silent);
        queue.hold(2, text("held too\n"));
        assert_eq!(due(&mut queue), []);
        assert_eq!(queue.known_bytes(), 5 + 9);
        queue.release(0..2);
        assert_eq!(due(&mut queue), [text("held\n"), Answer::Silent]);
        assert_eq!(queue.len(), 1);
        queue.release(2..3);
        assert_eq!(due(&mut queue), [text("held too\n")]);
        assert_eq!(queue.known_bytes(), 0);
    }

    #[test]
    fn answers_for_lines_already_gone_or_never_read_are_ignored() {
        let mut queue = AnswerQueue::default();
        let line = queue.reserve();
        queue.fill(line, text("x\n"));
        due(&mut queue);
        queue.fill(line, text("again\n"));
        queue.fill(7, text("never\n"));
        queue.release(0..9);
        assert_eq!(queue.known_bytes(), 0);
        assert!(queue.is_empty());
    }
}
