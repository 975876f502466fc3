//! The socket's reading side of a session, polled in the session's own context.

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::SystemTime;

use actix::prelude::*;
use log::debug;
use tokio::io::{AsyncRead, ReadBuf};

use super::{ClientSession, LOG_TARGET};
use crate::line::LineSplitter;
use crate::stream::ReadHalf;

/// Bytes taken from a socket in one read. One buffer per thread, shared by every reader,
/// so an idle connection holds none.
const READ_CHUNK_BYTES: usize = 16 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK_BYTES].into());
}

/// The socket's reading side, polled inside the session's own context: lines reach the
/// session without a message or a task switch per read, and the session pauses it simply by
/// owing too much.
pub(super) struct ReadLoop {
    /// The socket's reading side.
    half: ReadHalf,
    /// Keeps a line cut by the end of a read until the next read completes it.
    splitter: LineSplitter,
    /// Bytes read but not yet taken, because the session came to owe too much part-way
    /// through a read: at most one read's worth.
    held: Vec<u8>,
    /// When the held bytes were read.
    held_at: SystemTime,
}

impl ReadLoop {
    /// A loop reading `half`, whose lines are at most `max_line_bytes` long.
    pub(super) fn new(half: ReadHalf, max_line_bytes: usize) -> ReadLoop {
        ReadLoop {
            half,
            splitter: LineSplitter::new(max_line_bytes),
            held: Vec::new(),
            held_at: SystemTime::UNIX_EPOCH,
        }
    }
}

/// Reads taken in one turn before the loop lets the other connections have theirs.
const READS_PER_TURN: usize = 4;

/// Hands `session` the lines of `bytes`, read at `received`, until it owes too much;
/// returns how many bytes it took.
fn take_lines(
    splitter: &mut LineSplitter,
    bytes: &[u8],
    received: SystemTime,
    session: &mut ClientSession,
    ctx: &mut Context<ClientSession>,
) -> usize {
    splitter.push_while(bytes, |line| {
        session.take_line(line, received, ctx);
        if session.owes_too_much() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
}

impl ActorFuture<ClientSession> for ReadLoop {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        session: &mut ClientSession,
        ctx: &mut Context<ClientSession>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..READS_PER_TURN {
            if session.owes_too_much() {
                session.room = Some(task.waker().clone());
                return Poll::Pending;
            }
            if !this.held.is_empty() {
                let taken = take_lines(&mut this.splitter, &this.held, this.held_at, session, ctx);
                this.held.drain(..taken);
                session.offer_records(ctx);
                session.flush(ctx);
                continue;
            }
            // `poll_read` rather than `readable` + `try_read`: after a short read it knows
            // the socket is drained and waits, where `try_read` would need one more system
            // call (answered "would block") per read to learn it.
            // The lines are taken straight from the buffer the bytes were read into.
            let ended = READ_BUFFER.with_borrow_mut(|buffer| {
                let mut filled = ReadBuf::new(buffer);
                let read = ready!(Pin::new(&mut this.half).poll_read(task, &mut filled));
                let received = SystemTime::now();
                let conn = session.conn;
                Poll::Ready(match read {
                    Ok(()) if filled.filled().is_empty() => {
                        debug!(target: LOG_TARGET, "conn {conn}: end of input");
                        this.splitter
                            .finish(|line| session.take_line(line, received, ctx));
                        true
                    }
                    Ok(()) => {
                        let bytes = filled.filled();
                        debug!(target: LOG_TARGET, "conn {conn}: read {} bytes", bytes.len());
                        let taken = take_lines(&mut this.splitter, bytes, received, session, ctx);
                        if taken < bytes.len() {
                            this.held.extend_from_slice(&bytes[taken..]);
                            this.held_at = received;
                        }
                        false
                    }
                    Err(_) => true,
                })
            });
            let Poll::Ready(ended) = ended else {
                return Poll::Pending;
            };
            session.offer_records(ctx);
            session.flush(ctx);
            if ended {
                session.reader = None;
                session.close_reading(ctx);
                return Poll::Ready(());
            }
        }
        task.waker().wake_by_ref();
        Poll::Pending
    }
}
